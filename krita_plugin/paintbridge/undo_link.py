"""Two undo commands that Ctrl+Z and Ctrl+Shift+Z take as one (plain rules, no Krita).

An upscale applied onto an image of the old size is two commands in Krita 5.1.5: Image >
Scale, then Add Layer. Krita's Python API cannot make them one command: Document has no
undo macro, each of scaleImage/resizeImage/crop and Node.addChildNode runs as its own
stroke with its own command, and the only way to put a layer in without a command
(Node.setChildNodes) leaves that layer behind when the scale is undone (measured:
tests/krita_scenario/undo_steps.py; BENCHMARKS.md, "What lands on the undo stack").

So the plugin links them where the painter undoes: after Krita's own Undo (or Redo)
action has run, if the stack's position is now between the linked commands (the layer
undone, the scale still done — or, redoing, the scale redone and the layer not yet), the
same action runs once more. One Ctrl+Z takes the upscale away whole; one
Ctrl+Shift+Z brings it back. The Undo History docker still lists two rows, and a click
there between them is honoured as the painter's choice (no action ran).

A link holds as long as the commands it names are still on the stack where they were:
`texts` is the Undo History's list of commands (done and undone, oldest first) when the
pair was pushed, ending with the pair; `done` is how many commands are done now.
"""

from __future__ import annotations

from dataclasses import dataclass

UNDO, REDO = "undo", "redo"


@dataclass(frozen=True)
class Link:
    document: str  # the document's key
    texts: tuple[str, ...]  # the stack when the linked commands were pushed, ending with them
    count: int = 2  # how many commands at the end of `texts` act as one

    def valid(self, texts: list[str] | None) -> bool:
        """The commands are still where they were: the stack starts with the same commands
        (what came after may have been pushed since, or undone)."""
        return (texts is not None and 2 <= self.count <= len(self.texts)
                and tuple(texts[: len(self.texts)]) == self.texts)

    def inside(self, done: int) -> bool:
        """Some of the linked commands done and some not: a state the painter never asked for."""
        return len(self.texts) - self.count < done < len(self.texts)


def repeat(link: Link, action: str, document: str, texts: list[str] | None, done: int | None) -> bool:
    """After Krita's Undo or Redo: run it once more? Only while the position is inside the
    linked commands, on their document, with them in place. (Undo then runs until none of
    them is done, Redo until all are.)"""
    if action not in (UNDO, REDO) or document != link.document or done is None or not link.valid(texts):
        return False
    return link.inside(done)


def prune(links: list[Link], document: str, texts: list[str] | None) -> list[Link]:
    """Links of this document whose pair has left the stack (a new command replaced the undone
    ones) are dropped; other documents' links stay."""
    return [k for k in links if k.document != document or k.valid(texts)]
