"""dispy's node-side semantics through real scheduler, node and client processes: per-node set-up
(NodeAllocate's depends and setup_args, resetup_node), set-up failures and nodes of another Python
told to the user, the globals dispynode gives job code, per-job code in dispy_job_depends, and a
cancel that interrupts the job first. Client programs follow dispy's examples (py3/examples in
pgiri/dispy: node_setup, replace_inmem, provisional_results, delegate, longrun), reduced in time."""

from __future__ import annotations

from procs import Cluster
from waiting import wait_until


def test_node_setup_example_gives_each_node_its_own_file_and_setup_args(cluster: Cluster) -> None:
    """dispy's node_setup example: `allocate` picks a data file per node; `setup(data_file)` reads it
    (using `sys` and `os`, dispynode's globals, without importing them); jobs hash what it read."""
    cluster.scheduler()
    cluster.node(cpus=1, name="alpha")
    cluster.node(cpus=1, name="beta")
    for name in ("one.dat", "two.dat"):
        (cluster.workdir / name).write_bytes(name.encode() * 100)
    client = cluster.run_client(
        """
        def setup(data_file):
            global data, algorithms, hashlib, time, file_name
            import hashlib, time
            data = open(data_file, 'rb').read()
            file_name = data_file
            algorithms = list(hashlib.algorithms_guaranteed) if sys.version_info.major > 2 else []
            algorithms = [alg for alg in algorithms if not alg.startswith('shake')]
            return 0

        def cleanup(data_file):
            global data, algorithms, hashlib, time, file_name
            del data, algorithms, file_name

        def compute(n):
            alg = algorithms[n % len(algorithms)]
            csum = getattr(hashlib, alg)()
            csum.update(data)
            return (dispy_node_name, file_name, alg, csum.hexdigest(), os.getcwd() != '')

        if __name__ == '__main__':
            import dispy_client as dispy, sys, os, glob, hashlib
            data_files = sorted(glob.glob('*.dat'))
            node_id = 0

            class NodeAllocate(dispy.NodeAllocate):
                def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform='*'):
                    global node_id
                    data_file = data_files[node_id % len(data_files)]
                    node_id += 1
                    print('Node %s processes "%s"' % (name, data_file))
                    self.depends = [data_file]
                    self.setup_args = (os.path.basename(data_file),)
                    return cpus

            cluster = dispy.SharedJobCluster(compute, nodes=[NodeAllocate('*')], setup=setup, cleanup=cleanup)
            jobs = [cluster.submit(n) for n in range(10)]
            by_node = {}
            for job in jobs:
                job()
                assert job.status == dispy.DispyJob.Finished, job.exception
                node, name, alg, digest, _ = job.result
                assert digest == getattr(hashlib, alg)(open(name, 'rb').read()).hexdigest()
                by_node.setdefault(node, set()).add(name)
            print('by node', sorted((k, sorted(v)) for k, v in by_node.items()))
            assert all(len(files) == 1 for files in by_node.values()), by_node
            assert len({f for files in by_node.values() for f in files}) == len(by_node)
            cluster.close()
            print('ok')
        """
    )
    assert client.stdout.strip().endswith("ok")
    assert client.count(r'Node (alpha|beta) processes "(one|two)\.dat"') >= 2


def test_a_setup_that_fails_is_told_to_the_user_and_the_jobs_end_with_the_reason(cluster: Cluster) -> None:
    sched = cluster.scheduler()
    cluster.node(cpus=1, name="alpha")
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def setup(path):  # dispy's node_setup with no setup_args: setup() misses its argument
            return 0

        def compute(n):
            return n

        told = []
        def cluster_status(status, node, job):
            if status == dispy.DispyNode.Closed and node.failure:
                told.append((node.name, node.failure))

        cluster = dispy.SharedJobCluster(compute, setup=setup, cluster_status=cluster_status)
        jobs = [cluster.submit(n) for n in range(3)]
        for job in jobs:
            assert job() is None
            assert job.status == dispy.DispyJob.Terminated, job.status
            assert 'cannot run on any node' in job.exception and "missing 1 required positional argument" in job.exception
        cluster.close()
        assert told and told[0][0] == 'alpha' and 'setup failed' in told[0][1], told
        print('ok')
        """
    )
    assert client.stdout.strip().endswith("ok")
    assert "cannot run on node alpha" in client.stderr  # the client's log line
    sched.wait_for_line(r"cluster compute \(\w+\) of user \S+ cannot run on node alpha: setup failed", stream="stderr")


def test_resetup_node_reruns_allocate_and_setup_with_the_new_setup_args(cluster: Cluster) -> None:
    """dispy's replace_inmem example, reduced: after a round of jobs, resetup_node makes `allocate`
    give the node new setup_args; `cleanup(*old)` runs, then `setup(*new)`, and jobs see the new data."""
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def setup(version, n):
            global data
            data = (version, n)
            return 0

        def cleanup(version, n):
            global data
            del data

        def compute(i):
            time.sleep(0.05)  # time: a dispynode global
            return data

        class NodeAllocate(dispy.NodeAllocate):
            rounds = 0
            def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=''):
                NodeAllocate.rounds += 1
                self.setup_args = ('v%d' % NodeAllocate.rounds, NodeAllocate.rounds * 10)
                return cpus

        cluster = dispy.SharedJobCluster(compute, nodes=[NodeAllocate('*')], setup=setup, cleanup=cleanup)
        first = [cluster.submit(i) for i in range(4)]
        assert {j() for j in first} == {('v1', 10)}, [(j.status, j.exception) for j in first]
        assert cluster.resetup_node('alpha') == 0
        assert cluster.resetup_node('no-such-node') == -1
        second = [cluster.submit(i) for i in range(4)]
        assert {j() for j in second} == {('v2', 20)}, [(j.status, j.exception) for j in second]
        cluster.close()
        print('ok')
        """
    )
    assert client.stdout.strip().endswith("ok")


def test_job_code_sees_dispynodes_globals_and_per_job_code(cluster: Cluster) -> None:
    """dispy's provisional_results (a job using `os` it never imported) and delegate
    (`dispy_job_depends=[function]`, found in the job's globals) examples; `depends` holding an
    instance (its class travels) and a functools.partial (its function travels)."""
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    client = cluster.run_client(
        """
        import functools
        import dispy_client as dispy

        def compute(n):
            return (os.getpid() > 0, time.time() > 0, socket.gethostname() != '', sys.version_info.major)

        def delegate(func_name, n):
            func = globals()[func_name]
            return func(n)

        def func1(n):
            return (dispy_node_name + ': func1', n)

        def func2(n):
            return (dispy_node_name + ': func2', n)

        class Scaler:
            def __init__(self, k):
                self.k = k
            def scale(self, n):
                return self.k * n

        def add(a, b):
            return a + b

        def uses_depends(n):
            return Scaler(3).scale(n), add(n, 1)

        with dispy.SharedJobCluster(compute) as cluster:
            assert cluster.submit(1)() == (True, True, True, 3)
        with dispy.SharedJobCluster(delegate) as cluster:
            jobs = [cluster.submit(f.__name__, i, dispy_job_depends=[f]) for i, f in enumerate([func1, func2])]
            assert [j() for j in jobs] == [('alpha: func1', 0), ('alpha: func2', 1)], [j.exception for j in jobs]
            other = cluster.submit('func1', 5)  # another job does not see them
            other()
            assert other.status == dispy.DispyJob.Terminated and 'KeyError' in other.exception, other.exception
        with dispy.SharedJobCluster(uses_depends, depends=[Scaler(2), functools.partial(add, 1)]) as cluster:
            job = cluster.submit(4)
            assert job() == (12, 5), job.exception
        print('ok')
        """
    )
    assert client.stdout.strip().endswith("ok")


def test_longrun_cancel_interrupts_the_job_and_its_best_estimate_is_the_result(cluster: Cluster) -> None:
    """dispy's longrun example: a job computes until cancelled; on KeyboardInterrupt it returns its
    best estimate, which the user gets as a Finished job's result."""
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def compute():
            import time, random
            best = 0
            while 1:
                try:
                    v = random.uniform(0, 1)
                    if v > best:
                        best = v
                        dispy_provisional_result(best)
                    time.sleep(0.1)
                except KeyboardInterrupt:
                    break
            return best

        cluster = dispy.SharedJobCluster(compute)
        jobs = [cluster.submit() for _ in range(2)]
        for job in jobs:
            while job.status != dispy.DispyJob.ProvisionalResult:
                job.finish.wait(0.05)
        for job in jobs:
            cluster.cancel(job)
        best = 0
        for job in jobs:
            result = job()
            assert job.status == dispy.DispyJob.Finished, (job.status, job.exception)
            assert 0 < result < 1
            best = max(best, result)
        print('best estimate: %s' % best)
        cluster.close()
        print('ok')
        """
    )
    assert client.stdout.strip().endswith("ok")


def test_a_node_of_another_python_is_skipped_and_the_user_told_why(cluster: Cluster) -> None:
    """Version skew. The node claims another Python through its test-only override
    ($DISPY_TEST_NODE_RUNTIME; this machine has one Python): the scheduler logs it, the client is
    told (log and cluster_status), jobs end saying why; a node that fits then runs them."""
    sched = cluster.scheduler()
    cluster.node(cpus=1, name="old", env={"DISPY_TEST_NODE_RUNTIME": "3.9/3.1.3"})
    client = cluster.client(
        """
        import threading
        import dispy_client as dispy

        def compute(n):
            return n * 2

        told = []
        fits = threading.Event()
        def cluster_status(status, node, job):
            if status == dispy.DispyNode.Closed and node.failure:
                told.append((node.name, node.failure))
            elif status == dispy.DispyNode.Initialized and node.name == 'new':
                fits.set()

        cluster = dispy.SharedJobCluster(compute, cluster_status=cluster_status)
        job = cluster.submit(1)
        assert job() is None and job.status == dispy.DispyJob.Terminated
        assert 'node old' in job.exception and 'Python 3.9' in job.exception, job.exception
        assert told and told[0][0] == 'old' and 'Python 3.9' in told[0][1], told
        print('waiting for a node', flush=True)
        assert fits.wait(60)  # the test starts one
        job = cluster.submit(21)
        assert job() == 42, (job.status, job.exception)
        cluster.close()
        print('ok')
        """
    )
    client.wait_for_line("waiting for a node", timeout=60)
    sched.wait_for_line(r"cannot run on node old: the node runs Python 3\.9, the client Python 3\.\d+", stream="stderr")
    cluster.node(cpus=1, name="new")
    assert client.wait(60) == 0, cluster.describe()
    assert client.stdout.strip().endswith("ok")
    wait_until(lambda: "cannot run on node old" in client.stderr, 10, "the client's log line")


def test_jobcluster_whose_setup_fails_ends_its_jobs_instead_of_hanging(cluster: Cluster) -> None:
    """dispy's node_setup example as a JobCluster whose NodeAllocate forgets the setup_args: the
    local node's set-up fails, and the jobs end saying why (the issue saw this hang for ever)."""
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def setup(data_file):
            global data
            data = open(data_file, 'rb').read()
            return 0

        def compute(n):
            return len(data) + n

        cluster = dispy.JobCluster(compute, nodes=[dispy.NodeAllocate('*')], setup=setup)
        job = cluster.submit(1)
        assert job() is None and job.status == dispy.DispyJob.Terminated, (job.status, job.exception)
        assert 'cannot run on any node' in job.exception and 'data_file' in job.exception, job.exception
        cluster.close()

        class WithFile(dispy.NodeAllocate):
            def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=''):
                self.depends, self.setup_args = ['data.bin'], ('data.bin',)
                return cpus

        with open('data.bin', 'wb') as f:
            f.write(b'x' * 10)
        with dispy.JobCluster(compute, nodes=[WithFile('*')], setup=setup) as cluster:
            job = cluster.submit(1)
            assert job() == 11, (job.status, job.exception)
        print('ok')
        """,
        timeout=120,
    )
    assert client.stdout.strip().endswith("ok")
