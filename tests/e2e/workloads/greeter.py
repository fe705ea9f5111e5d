"""A workload file with one function, ``run``, for the test that names another."""


def run(ctx):
    print(f"greetings from {ctx.name}")
