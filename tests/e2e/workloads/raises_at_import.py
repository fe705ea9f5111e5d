"""A workload file that raises while it is loaded: its guest cannot start it."""

raise RuntimeError("raises_at_import fails on purpose")


def run(ctx):
    print(f"{ctx.name} never gets here")
