"""pipeline.stages: decoding into rows and a Done per video, batches of exactly B units across videos, records
handed on in item order; and decode workers watched with bounded waits (issue 19, item 3), on real DataLoader worker
processes: a worker that dies, or that stays on one item while its CPU time stands still (a file that does not
answer), costs that item, named, and ends the run; `close` leaves no worker behind whatever they were doing.
"""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from conftest import N_FRAMES, read_indices

from data.synth import write_video
from pipeline.decode import ClipSampling, Geometry, Sampling, VideoInfo
from pipeline.extract import ExtractConfig, decode_loader
from pipeline.sources import Item
from pipeline.stages import Batch, DecodeStream, DecodeWorkers, Done, InOrder, Rows, WorkerLost, rebatch

GEOMETRY = Geometry(size=32, resize=32, crop="none")
INFO = VideoInfo(fps=25.0, n_frames=10, width=64, height=48)


def frame_rows(slot: int, first: int, n: int) -> Rows:
    """n frame units of video `slot`, frames first..first+n-1; every pixel of a unit holds its frame number."""
    index = np.arange(first, first + n)
    units = torch.from_numpy(np.repeat(index, 2 * 2 * 3).reshape(n, 2, 2, 3).astype(np.uint8))
    return Rows(slot, units, index, index + 1, index / 25, (index + 1) / 25)


def outline(messages) -> list[tuple]:
    """('batch', [(slot, first frame, units) per part]) or ('done', slot) for each message."""
    return [("done", m.slot) if isinstance(m, Done) else ("batch", [(p.slot, int(p.frame_index[0]), len(p))
                                                                   for p in m.parts]) for m in messages]


# -- Rows and rebatch ------------------------------------------------------------------------------------------------
def test_rows_split_keeps_each_unit_with_its_span():
    head, tail = frame_rows(3, 10, 5).split(2)
    assert (head.slot, tail.slot, len(head), len(tail)) == (3, 3, 2, 3)
    assert head.frame_index.tolist() == [10, 11] and tail.frame_end.tolist() == [13, 14, 15]
    assert head.units[:, 0, 0, 0].tolist() == [10, 11] and tail.time_s.tolist() == [12 / 25, 13 / 25, 14 / 25]


def test_rebatch_fills_every_batch_across_videos_and_sends_a_done_only_after_the_videos_last_rows():
    messages = [frame_rows(0, 0, 5), frame_rows(1, 0, 2), Done(1), frame_rows(0, 5, 1), Done(0), frame_rows(2, 0, 3),
                Done(2)]
    out = list(rebatch(messages, 4))
    assert outline(out) == [
        ("batch", [(0, 0, 4)]),
        ("batch", [(0, 4, 1), (1, 0, 2), (0, 5, 1)]),  # video 1 ended inside this batch: its Done waited for it
        ("done", 1), ("done", 0),
        ("batch", [(2, 0, 3)]),                        # the last batch may be smaller
        ("done", 2)]
    assert out[1].units()[:, 0, 0, 0].tolist() == [4, 0, 1, 5]


def test_a_video_without_rows_is_done_at_once():
    assert outline(rebatch([frame_rows(0, 0, 1), Done(1, error="broken"), Done(0)], 4)) == [
        ("done", 1), ("batch", [(0, 0, 1)]), ("done", 0)]


# -- InOrder ---------------------------------------------------------------------------------------------------------
def test_records_are_handed_on_in_item_order_whatever_order_videos_finish_in():
    items = [Item("v0", "/v0.mp4", ("a",), split="train"), Item("v1", "/v1.mp4", ("b",)), Item("v2", "/v2.mp4", ())]
    handed = []
    order = InOrder(items, handed.append)
    features = np.arange(20, dtype=np.float32).reshape(5, 4)
    order.add(Batch([frame_rows(1, 0, 2), frame_rows(0, 0, 3)]), features)
    assert order.finish(Done(1, INFO)) == [] and handed == []  # v0 comes first and is not done
    order.add(Batch([frame_rows(0, 3, 1)]), np.full((1, 4), 99, np.float32))
    got = order.finish(Done(0, INFO))
    assert [r.video_id for r in got] == ["v0", "v1"] and handed == got
    v0, v1 = got
    np.testing.assert_array_equal(v0.features, np.vstack([features[2:], np.full((1, 4), 99)]))
    np.testing.assert_array_equal(v1.features, features[:2])
    assert v0.frame_index.tolist() == [0, 1, 2, 3] and v0.frame_end.tolist() == [1, 2, 3, 4]
    assert (v0.path, v0.label, v0.split, v0.status) == ("/v0.mp4", "a", "train", "ok")
    assert (v0.fps, v0.n_frames, v0.width, v0.height) == (25.0, 10, 64, 48)
    (failed,) = order.finish(Done(2, error="v2.mp4: no video stream"))
    assert (failed.video_id, failed.status, failed.error) == ("v2", "failed", "v2.mp4: no video stream")
    assert failed.features is None


# -- DecodeStream on real files --------------------------------------------------------------------------------------
def test_decode_stream_sends_each_videos_rows_then_its_done_and_a_bad_file_costs_only_its_item(index_clip, bad_inputs,
                                                                                              images):
    image = next((images / "disc").glob("*.png"))
    items = [Item("clip", str(index_clip), ()), Item("bad", str(bad_inputs["random_bytes"]), ()),
             Item("img", str(image), (), kind="image")]
    messages = list(DecodeStream(items, Sampling(every=10), GEOMETRY))
    shapes = [(type(m).__name__, m.slot) for m in messages]
    n = shapes.count(("Rows", 0))
    assert shapes == [("Rows", 0)] * n + [("Done", 0), ("Done", 1), ("Rows", 2), ("Done", 2)]
    clip_rows = messages[:n]
    assert np.concatenate([r.frame_index for r in clip_rows]).tolist() == [0, 10, 20]
    assert read_indices(torch.cat([r.units for r in clip_rows]).numpy()).tolist() == [0, 10, 20]
    done_clip, done_bad, image_rows, done_image = messages[n:]
    assert done_clip.info.n_frames == N_FRAMES and not done_clip.error
    assert done_bad.info is None and str(bad_inputs["random_bytes"]) in done_bad.error
    assert image_rows.units.shape == (1, 32, 32, 3) and done_image.info.n_frames == 1


def test_clip_sampling_sends_one_row_per_clip_and_an_image_as_one_clip_of_itself(index_clip, images):
    image = next((images / "disc").glob("*.png"))
    items = [Item("clip", str(index_clip), ()), Item("img", str(image), (), kind="image")]
    messages = list(DecodeStream(items, ClipSampling(clip_len=8, clip_stride=8), GEOMETRY))
    clips, still = messages[:3], messages[4]
    assert [type(m).__name__ for m in messages] == ["Rows"] * 3 + ["Done", "Rows", "Done"]
    for k, rows in enumerate(clips):
        assert rows.units.shape == (1, 8, 32, 32, 3) and rows.frame_index.tolist() == [8 * k]
        assert read_indices(rows.units[0].numpy()).tolist() == list(range(8 * k, 8 * k + 8))
    assert still.units.shape == (1, 8, 32, 32, 3) and still.frame_index.tolist() == [0]
    assert still.frame_end.tolist() == [1]  # one real frame, padded to the clip length
    assert all(torch.equal(frame, still.units[0, 0]) for frame in still.units[0])


def items_with_a_held_file(tmp_path, hold) -> tuple[list[Item], object]:
    items = []
    for i in range(3):
        path = write_video(tmp_path / f"c{i}.mkv", np.full((4, 32, 32, 3), 40 * i, dtype=np.uint8))
        items.append(Item(id=f"c{i}", path=str(path), labels=()))
    return items, hold(tmp_path / "c1.mkv")


def watched_workers(items: list[Item], stall_s: float) -> DecodeWorkers:
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32, crop="none",
                        workers=1)
    return DecodeWorkers(decode_loader(items, cfg, Geometry(size=32, resize=32, crop="none"),
                                       torch.device("cpu")).loader, stall_s=stall_s)


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["stuck opening a file that does not answer", "killed (SIGKILL)"])
def test_a_dead_or_stuck_decode_worker_costs_the_item_in_hand_and_ends_the_run(tmp_path, hold, worker):
    items, held = items_with_a_held_file(tmp_path, hold)
    workers = watched_workers(items, stall_s=3.0)
    reached: list[float] = []

    def at_the_held_file() -> None:  # the worker blocks opening c1: note when, and kill it if asked
        held.opened.wait(120)
        reached.append(time.monotonic())
        if worker.startswith("killed"):
            for _, pid, _ in workers.board.workers():
                os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=at_the_held_file)
    watcher.start()
    done = []
    try:
        with pytest.raises(WorkerLost) as lost:
            for message in workers:
                done += [message.slot] if isinstance(message, Done) else []
        took = time.monotonic() - reached[0]
    finally:
        workers.close()
        held.release()
        watcher.join()
    # c0 came out before c1 was reached, unless the kill overtook its messages (then a rerun redoes it)
    assert done in ([0], []) and list(lost.value.lost) == [1]
    why = lost.value.lost[1]
    assert ("made no progress on it for 3 s" if worker.startswith("stuck") else "died while decoding it") in why
    assert took < (3.0 if worker.startswith("stuck") else 0) + 8
    assert not multiprocessing.active_children()
