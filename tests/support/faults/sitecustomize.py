"""Faults for the resilience tests, injected into server processes from outside.

Python imports `sitecustomize` at start-up from the path, so a server (and every worker it
spawns, which inherit its environment) started with this folder on PYTHONPATH runs this
first. Without the variables below it does nothing; the server's code has no hook for them.

ARROWSMITH_TEST_RUNNER_FAULT=<file>: once <file> exists, the next batch a runner takes ends
the runner's thread with an error, as a bug in its loop would. The process that deletes the
file takes the fault, so among several workers exactly one does.

ARROWSMITH_TEST_HTTP_FRONT_FAULT=<file>: once <file> exists, the HTTP front's server stops
on its own, as a crash of its thread would end it.

ARROWSMITH_TEST_DRAIN_DELAY=<seconds>: a stopping server waits this long before it drains,
so that a test can look at it between a fault and its exit.
"""

import os
import threading
import time


def _install() -> None:
    fault_file = os.environ.get("ARROWSMITH_TEST_RUNNER_FAULT")
    drain_delay = os.environ.get("ARROWSMITH_TEST_DRAIN_DELAY")
    http_fault = os.environ.get("ARROWSMITH_TEST_HTTP_FRONT_FAULT")
    if http_fault:
        from arrowsmith.http import server as http_server

        serve = http_server.HttpFront._serve

        def faulty_serve(self: http_server.HttpFront) -> None:
            def end_when_triggered() -> None:
                while not os.path.exists(http_fault):
                    time.sleep(0.05)
                assert self._server is not None
                self._server.should_exit = True

            threading.Thread(target=end_when_triggered, daemon=True).start()
            serve(self)

        http_server.HttpFront._serve = faulty_serve  # type: ignore[method-assign]
    if fault_file:
        from arrowsmith.batching.runner import BatchRunner

        run_batch = BatchRunner.run_batch

        def faulty_run_batch(self: BatchRunner, batch: object) -> None:
            try:
                os.unlink(fault_file)
            except FileNotFoundError:
                return run_batch(self, batch)  # type: ignore[arg-type]
            raise RuntimeError("injected fault: the runner loop broke")

        BatchRunner.run_batch = faulty_run_batch  # type: ignore[method-assign]
    if drain_delay:
        from arrowsmith import server

        drain = server.drain

        def delayed_drain(*args: object, **kwargs: object) -> list[str]:
            time.sleep(float(drain_delay))
            return drain(*args, **kwargs)  # type: ignore[arg-type]

        server.drain = delayed_drain  # type: ignore[assignment]


_install()
