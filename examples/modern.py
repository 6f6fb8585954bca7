"""Beyond dispy: a cluster as a concurrent.futures Executor, from asyncio, with a progress bar.

    python examples/modern.py
"""

import asyncio

import dispy_client as dispy


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def main(cluster):
    jobs = [cluster.submit(n) for n in range(10)]
    first = await asyncio.gather(*jobs)  # `await job` runs nothing on this loop
    last = await cluster.asubmit(90)
    return first, last


if __name__ == "__main__":
    with dispy.JobCluster(fib) as cluster:
        with cluster.executor() as executor:
            print("executor:", sum(executor.map(fib, range(200))))
        print("map:", sum(cluster.map(range(100), progress=True)))
        first, last = asyncio.run(main(cluster))
        print("asyncio:", first, last)
