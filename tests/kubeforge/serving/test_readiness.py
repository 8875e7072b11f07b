"""Pod readiness over a server's workers (kubeforge.serving.readiness), without a server."""

from kubeforge.serving.readiness import WorkerReadiness


def test_the_pod_is_ready_only_once_every_worker_is(tmp_path):
    first, second = (WorkerReadiness(2, index, root=tmp_path) for index in (1, 2))
    assert first.directory == second.directory  # siblings: the same parent process
    for worker in (first, second):
        worker.loading()
    first.ready()
    assert not first.pod_ready() and not second.pod_ready()  # one loaded, the other still loading
    second.ready()
    assert first.pod_ready() and second.pod_ready()


def test_a_worker_that_loads_again_takes_the_pod_out_of_ready(tmp_path):
    first, second = (WorkerReadiness(2, index, root=tmp_path) for index in (1, 2))
    first.ready()
    second.ready()
    second.loading()  # restarted by the arbiter
    assert not first.pod_ready() and not second.pod_ready()
    second.ready()
    assert first.pod_ready()


def test_one_worker_or_no_bentoml_worker_needs_no_marks(tmp_path):
    for readiness in (WorkerReadiness(1, 1, root=tmp_path), WorkerReadiness(4, None, root=tmp_path)):
        assert readiness.directory is None and not readiness.pod_ready()
        readiness.ready()
        assert readiness.pod_ready()
    assert not any(tmp_path.iterdir())


def test_workers_take_their_marks_back_and_the_last_removes_the_directory(tmp_path):
    first, second = (WorkerReadiness(2, index, root=tmp_path) for index in (1, 2))
    first.ready()
    second.ready()
    first.release()  # the server is stopping: one worker has exited
    assert first.directory.exists() and not second.pod_ready()
    second.release()
    assert not any(tmp_path.iterdir())
    WorkerReadiness(2, 1, root=tmp_path).release()  # exiting before it ever loaded: nothing to remove, no error
