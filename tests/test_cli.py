"""The CLI's own pieces, without a server: grids, PNG writing, messages."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image

from bridge_server import grids
from bridge_server.cli import write_result
from protocol import RawImage
from protocol.plots import Plot, PlotAxis


def _cells(n: int, size: int = 32) -> list[Image.Image]:
    return [Image.new("RGBA", (size, size), (10 * i, 100, 200, 255)) for i in range(n)]


def test_xyz_grid_has_headers_not_per_cell_captions():
    plot = Plot(axes=[PlotAxis("Steps", ["1", "2", "3"]), PlotAxis("CFG scale", ["4", "8"])])
    labels = [[f"Steps: {x}", f"CFG scale: {y}"] for y in (4, 8) for x in (1, 2, 3)]
    layout = grids.layout(plot, "a cat", 6)
    assert (layout.columns, layout.rows, layout.planes, layout.headers) == (3, 2, 1, True)
    grid = grids.draw_grid(_cells(6), labels, layout)
    # a header row above and a header column at the left; the cells touch each other
    head = grid.height - 2 * 32
    left = grid.width - 3 * 32
    assert 0 < head < 60 and 0 < left < 200
    assert grid.getpixel((left + 1, head + 1))[1] == 100 and grid.getpixel((left + 33, head + 33))[1] == 100


def test_z_axis_gives_side_by_side_grids_with_titles():
    plot = Plot(axes=[PlotAxis("Steps", ["1", "2"]), PlotAxis("CFG scale", ["4"]), PlotAxis("Seed", ["1", "2"])])
    labels = [[f"Steps: {x}", "CFG scale: 4", f"Seed: {z}"] for z in (1, 2) for x in (1, 2)]
    layout = grids.layout(plot, "", 4)
    assert (layout.columns, layout.rows, layout.planes) == (2, 1, 2)
    grid = grids.draw_grid(_cells(4), labels, layout)
    assert grid.width > 2 * 2 * 32 and grid.height < 3 * 32 + 120  # side by side, not stacked


def test_long_labels_wrap_instead_of_clipping():
    font = grids._font()
    lines = grids._wrap("Prompt S/R: " + "a very long prompt replacement " * 6, 120, font)
    assert len(lines) > 2 and all(font.getlength(line) <= 120 for line in lines)
    assert "".join(lines).replace(" ", "") == ("Prompt S/R: " + "a very long prompt replacement " * 6).replace(" ", "")


def test_parse_axis_error_names_the_flag():
    try:
        grids.parse_axis("Steps", "--xyz")
    except grids.GridError as exc:
        assert str(exc).startswith("--xyz 'Steps'")
    else:
        raise AssertionError("no error")


def _result(n: int, alpha: int = 255, **parameters):
    images = [RawImage(16, 16, 4, bytes([50, 60, 70, alpha]) * 256) for _ in range(n)]
    return SimpleNamespace(images=images, infotexts=[f"cell {i}\nSteps: 1" for i in range(n)], infotext="all",
                           seeds=list(range(n)), parameters=parameters)


def test_a_batch_is_numbered_like_a_plot_and_gets_a_grid(tmp_path, capsys):
    paths = write_result(_result(3), tmp_path / "batch.png")
    assert [p.name for p in paths] == ["batch-001.png", "batch-002.png", "batch-003.png"]
    with Image.open(tmp_path / "batch.png") as grid, Image.open(paths[1]) as second:
        assert grid.size == (32, 32) and grid.info["parameters"] == "cell 0\nSteps: 1"
        assert second.info["parameters"] == "cell 1\nSteps: 1"


def test_opaque_results_are_rgb_pngs_transparent_ones_rgba(tmp_path):
    write_result(_result(1), tmp_path / "a.png")
    write_result(_result(1, alpha=0), tmp_path / "b.png")
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert (a.mode, b.mode) == ("RGB", "RGBA")


def test_an_upscale_without_denoise_prints_no_seed(tmp_path, capsys):
    write_result(_result(1, kind="upscale", denoising_strength=0), tmp_path / "u.png")
    assert "seed" not in capsys.readouterr().err
    write_result(_result(1, kind="txt2img"), tmp_path / "t.png")
    assert "(seed 0)" in capsys.readouterr().err


def test_errors_name_what_the_name_is_of(engine):
    from engine.errors import EngineError
    from engine.params import HiresParams, JobParams

    try:
        engine.check(JobParams(prompt="a <lora:../../etc/passwd:1>"))
    except EngineError as exc:
        assert exc.message.startswith("LoRA '../../etc/passwd' in the prompt is not a plain name"), exc.message
    else:
        raise AssertionError("accepted")
    try:
        engine.check(JobParams(prompt="x", hires=HiresParams(scale=2, upscaler="RealESRGAN_x4plus")))
    except EngineError as exc:  # the resamplers are named too, and Latent where the hires fix takes it
        assert exc.field == "hires.upscaler"
        assert all(name in exc.message for name in ("Latent", "Lanczos", "Nearest")), exc.message
    else:
        raise AssertionError("accepted")


def test_plot_errors_name_the_xyz_flag():
    from bridge_server.cli import _cli_field_message
    from protocol.errors import invalid

    assert _cli_field_message(invalid("plot.axes[0].values", "axis 'Steps': values must be int")).startswith("--xyz: ")


def test_every_option_has_help_and_upscale_lists_only_what_applies():
    from bridge_server.cli import build_parser

    parser = build_parser()
    for name, sub in parser.commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
    upscale = parser.commands["upscale"].format_help()
    assert "--batch" not in upscale and "--subseed" not in upscale and "--width" not in upscale
    generate = parser.commands["generate"].format_help()
    assert "DPM++ 2M Karras" in generate and "PAINTBRIDGE_SERVER" in generate and "(default: 20)" in generate


def test_prompts_file_lines_take_the_webui_options():
    from protocol.errors import ProtocolError
    from protocol.plots import parse_line

    assert parse_line("a plain banana") == {"prompt": "a plain banana"}
    assert parse_line('--prompt "a banana" on a table --steps 3 --cfg_scale 5.5 --negative_prompt ugly --n_iter 2') == {
        "prompt": "a banana on a table", "steps": 3, "cfg_scale": 5.5, "negative_prompt": "ugly", "batch_count": 2}
    assert parse_line("--sampler_name 'DPM++ 2M' --outpath_samples /tmp --prompt x") == {"sampler": "DPM++ 2M", "prompt": "x"}
    for bad, words in (("--steps 3 a banana", "'a' is not an option"), ("--steps", "needs a value"),
                       ("--steps three --prompt x", "takes a int"), ("--restore_faces true", "unknown option"),
                       ('--prompt "unclosed', "quotation")):
        try:
            parse_line(bad)
        except ProtocolError as exc:
            assert words in exc.message, exc.message
        else:
            raise AssertionError(bad)


def test_prompts_file_cells_carry_their_own_settings():
    from protocol.plots import Plot, cells
    from protocol.requests import JobRequest

    request = JobRequest(prompt="base", width=64, height=64, steps=2,
                         plot=Plot(prompts=["a fox", "--prompt a dog --steps 4 --batch_size 2", "--seed 7"]))
    out = cells(request)
    assert [(c.request.prompt, c.request.steps, c.request.batch_size) for c in out] == [
        ("a fox", 2, 1), ("a dog", 4, 2), ("base", 2, 1)]
    assert out[2].request.seed == 7 and out[1].labels == ["a dog"]
