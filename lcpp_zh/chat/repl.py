"""The terminal chat (`lcpp-zh chat`): a REPL over a ChatSession.

Input: prompt_toolkit with history kept across runs on a terminal (bracketed paste and `\"\"\"` blocks for
several lines), plain line reading when stdin is a pipe. Output: the answer streamed as it comes, with
control characters and escape sequences taken out (the model's raw text stays in the conversation) and
wrapped by display width so double-width CJK characters never split at the margin, then a dim stats line.
Ctrl-C stops an answer, Ctrl-D or /bye leaves. Errors and notices are one dim line each.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from lcpp_zh.chat.session import ChatSession
from lcpp_zh.chat.wrap import ControlFilter, StreamWrapper, strip_controls
from lcpp_zh.errors import LcppError

logger = logging.getLogger(__name__)

HELP = """Commands:
  /help               this help
  /reset              forget the conversation (the system prompt stays)
  /system TEXT        set the system prompt (/system with no text clears it)
  /set NAME VALUE     change a sampling setting, e.g. /set temperature 0.5 (/set alone lists them)
  /save FILE          save the conversation as JSON
  /load FILE          load a conversation saved with /save
  /regen              answer the last question again
  /stats              numbers of the last answer and of the engine
  /lora               the LoRA adapters: id, name, scale, path
  /lora scale NAME S  set an adapter's scale (NAME or id; 0 = off), e.g. /lora scale 0 0.5
  /bye                leave (Ctrl-D too)
Several lines: paste them, or start and end a block with \"\"\".  Ctrl-C stops an answer."""

DIM, RESET = "\x1b[2m", "\x1b[0m"


class Terminal:
    """Where the REPL reads and writes; `interactive` when stdin and stdout are a terminal."""

    def __init__(self, history_path=None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                 stderr: TextIO = sys.stderr) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.interactive = stdin.isatty() and stdout.isatty()
        self._session = None
        if self.interactive:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory, InMemoryHistory

            history = InMemoryHistory()
            if history_path is not None:
                try:
                    history_path.parent.mkdir(parents=True, exist_ok=True)
                    history_path.touch()
                    history = FileHistory(str(history_path))
                except OSError as exc:  # a read-only cache must not stop the chat
                    logger.warning("input history not kept: %s", exc)
            self._session = PromptSession(history=history)

    def read_line(self, prompt: str) -> str:
        """One line; EOFError at the end of input (Ctrl-D), KeyboardInterrupt on Ctrl-C at the prompt."""
        if self._session is not None:
            return self._session.prompt(prompt)
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def width(self) -> int:
        return shutil.get_terminal_size((80, 24)).columns if self.interactive else 0

    def info(self, text: str) -> None:
        """Notices and stats: dim on a terminal; on stderr when output is piped, so stdout is just answers.
        Control characters are taken out: notices quote messages and file names."""
        text = strip_controls(text)
        if self.interactive:
            self.stdout.write(f"{DIM}{text}{RESET}\n")
            self.stdout.flush()
        else:
            self.stderr.write(text + "\n")
            self.stderr.flush()


def read_message(term: Terminal) -> str:
    """A user message: one line, a pasted block, or a \"\"\" ... \"\"\" block."""
    line = term.read_line(">>> ")
    if not line.lstrip().startswith('"""'):
        return line
    first = line.lstrip()[3:]
    if first.rstrip().endswith('"""') and first.strip():
        return first.rstrip()[:-3]
    lines = [first] if first else []
    while True:
        more = term.read_line("... ")
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(more)


def stream_answer(term: Terminal, chunks: Iterator[str]) -> bool:
    """Write the answer as it streams; returns False when the user stopped it with Ctrl-C.

    The model's text goes through a ControlFilter before the wrapper: an escape sequence in an answer
    (colours, cursor moves, OSC 8 links, a bidi override) would otherwise act on the user's terminal.
    """
    controls, wrapper = ControlFilter(), StreamWrapper(term.width())
    wrote = stopped = False
    try:
        for chunk in chunks:
            text = wrapper.feed(controls.feed(chunk))
            wrote = wrote or bool(text)
            term.stdout.write(text)
            term.stdout.flush()
    except KeyboardInterrupt:
        stopped = True
    finally:
        # Stopped between two chunks, the generator still holds the request: closing it ends the request
        # and records the turn now, before the stats and the next prompt.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        tail = wrapper.flush() + controls.flush()
        if wrote or tail:
            term.stdout.write(tail + "\n")
        term.stdout.flush()
    if stopped:
        term.info("(stopped)")
    return not stopped


def stats_line(session: ChatSession) -> str:
    f = session.last
    if f is None:
        return ""
    return (f"{f.completion_tokens} tokens, {f.tokens_per_s:.1f} tokens/s, first token {f.ttft_s:.2f} s, "
            f"prompt {f.prompt_tokens} ({f.cached_tokens} cached)"
            + (f", {f.draft_accepted}/{f.draft_tokens} guesses accepted" if f.draft_tokens else ""))


def run_command(term: Terminal, session: ChatSession, line: str) -> bool:
    """A slash command; returns False when the REPL should end."""
    name, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    commands: dict[str, Callable[[], None]] = {
        "help": lambda: term.info(HELP),
        "reset": lambda: (session.reset(), term.info("(conversation cleared)")),
        "system": lambda: (session.set_system(arg), term.info("(system prompt set)" if arg else "(system prompt cleared)")),
        "set": lambda: _set(term, session, arg),
        "save": lambda: term.info(f"(saved to {session.save(_need(arg, 'FILE'))})"),
        "load": lambda: term.info(f"(loaded {session.load(_need(arg, 'FILE'))} messages)"),
        "regen": lambda: _answer(term, session, session.regen()),
        "stats": lambda: term.info(f"{stats_line(session)}\nengine: {session.engine.stats()}"),
        "lora": lambda: _lora(term, session, arg),
    }
    if name in ("bye", "exit", "quit"):
        return False
    action = commands.get(name)
    if action is None:
        term.info(f"unknown command /{name}; /help lists them")
        return True
    try:
        action()
    except LcppError as exc:
        show_error(term, exc)
    return True


def show_error(term: Terminal, exc: LcppError) -> None:
    term.info("error: " + " ".join(str(exc).splitlines()))


def _need(arg: str, what: str) -> str:
    if not arg:
        raise LcppError(f"this command needs a {what}")
    return arg


def _set(term: Terminal, session: ChatSession, arg: str) -> None:
    parts = arg.split()
    if not parts:
        term.info("  ".join(f"{n}={getattr(session.params, n)}" for n in session.setting_names()))
        return
    if len(parts) != 2:
        raise LcppError("usage: /set NAME VALUE")
    name = session.set(parts[0], parts[1])
    term.info(f"({name} = {getattr(session.params, name)})")


def format_loras(adapters: list[dict]) -> str:
    """One line per adapter, as /lora shows them."""
    if not adapters:
        return "(no LoRA adapters loaded; start the chat with --lora ADAPTER.gguf)"
    return "\n".join(f"  {a['id']}  {a['name']}  scale {a['scale']:g}  {a['path']}" for a in adapters)


def _lora(term: Terminal, session: ChatSession, arg: str) -> None:
    """/lora lists the adapters; /lora scale NAME_OR_ID VALUE changes one scale without reloading."""
    parts = arg.split()
    if not parts:
        term.info(format_loras(session.engine.lora_adapters()))
        return
    if parts[0] != "scale" or len(parts) != 3:
        raise LcppError("usage: /lora, or /lora scale NAME_OR_ID VALUE")
    try:
        scale = float(parts[2])
    except ValueError:
        raise LcppError(f"/lora scale: {parts[2]!r} is not a number") from None
    # set_lora_scales has llama-server's semantics (unlisted adapters go to 0), so the others are listed at
    # their current scales; the last entry wins, and LoraSet.find resolves its "name" as a name or an id.
    keep = [{"id": a["id"], "scale": a["scale"]} for a in session.engine.lora_adapters()]
    term.info(format_loras(session.engine.set_lora_scales([*keep, {"name": parts[1], "scale": scale}])))


def _answer(term: Terminal, session: ChatSession, chunks: Iterator[str]) -> None:
    """Notices from before the answer (context trimming), the answer, then its notices and stats."""
    show_notices(term, session)
    try:
        stream_answer(term, chunks)
    except LcppError as exc:  # the engine failed midway
        show_error(term, exc)
    show_notices(term, session)
    if session.last is not None and session.last.reason != "error":
        term.info(stats_line(session))


def show_notices(term: Terminal, session: ChatSession) -> None:
    for notice in session.notices:
        term.info(f"({notice})")
    session.notices.clear()


def repl(session: ChatSession, term: Terminal) -> None:
    """Read, answer, repeat, until Ctrl-D, /bye or the end of piped input."""
    if term.interactive:
        term.info(f"Chat format {session.template.name}. Type a message; /help for commands, Ctrl-D or /bye to leave.")
    while True:
        try:
            text = read_message(term)
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line, as in a shell
        except EOFError:
            if term.interactive:
                term.stdout.write("\n")
            return
        if not text.strip():
            continue
        if text.startswith("/"):
            if not run_command(term, session, text.strip()):
                return
            continue
        try:
            _answer(term, session, session.ask(text))
        except LcppError as exc:  # the message cannot fit: refused before anything changed
            show_error(term, exc)
        except KeyboardInterrupt:  # Ctrl-C while the prompt was prepared, or twice in a row
            term.info("(stopped)")
