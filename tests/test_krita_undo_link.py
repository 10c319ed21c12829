"""Two undo commands that Krita's Undo and Redo take as one (undo_link.py), without Krita."""

from krita_plugin.paintbridge.undo_link import REDO, UNDO, Link, prune, repeat

STACK = ["Add Layer", "Freehand stroke", "Scale Image", "Add Layer"]


def test_undo_and_redo_run_again_only_between_the_linked_commands():
    link = Link("doc", tuple(STACK), 2)
    # One Ctrl+Z undid the layer: 3 of 4 done, between the pair -> undo once more.
    assert repeat(link, UNDO, "doc", STACK, 3)
    assert not repeat(link, UNDO, "doc", STACK, 2)  # both undone: stop
    # Redo after that: the scale redone (3 done) -> redo once more; both done (4) -> stop.
    assert repeat(link, REDO, "doc", STACK, 3) and not repeat(link, REDO, "doc", STACK, 4)
    assert not repeat(link, UNDO, "doc", STACK, 4)  # nothing of ours undone
    assert not repeat(link, UNDO, "doc", STACK, 1)  # the painter's own undo further down
    assert not repeat(link, UNDO, "other", STACK, 3)  # another document
    assert not repeat(link, UNDO, "doc", None, 3) and not repeat(link, UNDO, "doc", STACK, None)


def test_a_link_holds_while_its_commands_are_in_place():
    link = Link("doc", tuple(STACK), 2)
    painted_after = [*STACK, "Freehand stroke"]  # the painter painted on the upscale, then undid it
    assert repeat(link, UNDO, "doc", painted_after, 3)
    replaced = [*STACK[:3], "Fill"]  # the layer undone, then something new: the pair is gone
    assert not repeat(link, UNDO, "doc", replaced, 3) and not repeat(link, REDO, "doc", replaced, 3)
    assert prune([link, Link("b", ("x", "y"), 2)], "doc", replaced) == [Link("b", ("x", "y"), 2)]
    assert prune([link], "doc", painted_after) == [link]


def test_three_linked_commands_and_nonsense():
    link = Link("doc", ("Scale Image", "Add Layer", "Add Layer"), 3)
    assert repeat(link, UNDO, "doc", list(link.texts), 2) and repeat(link, UNDO, "doc", list(link.texts), 1)
    assert not repeat(link, UNDO, "doc", list(link.texts), 0)
    assert not repeat(Link("doc", ("Add Layer",), 2), UNDO, "doc", ["Add Layer"], 0)  # too short to link
    assert not repeat(link, "paste", "doc", list(link.texts), 2)
