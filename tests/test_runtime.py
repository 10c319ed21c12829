"""torch's process-wide knobs (engine/runtime.py)."""

from __future__ import annotations


def test_threads_default_to_the_usable_cpus_and_can_be_divided():
    import torch

    from engine import runtime

    before = torch.get_num_threads()
    try:
        assert runtime.configure("cpu", 1) == 1 and torch.get_num_threads() == 1
        assert runtime.configure("cpu") == runtime.usable_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_serve_takes_a_thread_count():
    from bridge_server.cli import build_parser

    args = build_parser().parse_args(["serve", "--demo", "--threads", "1"])
    assert args.threads == 1
