"""`edgespec chat`: a terminal coding assistant over `chat.Chat` (answers to stdout, notes to stderr)."""

from __future__ import annotations

import signal
import sys
from typing import Callable

import click

from ..contract.errors import EdgespecError, InputError
from .chat import Chat, format_stats
from .options import Invocation, pass_invocation
from .run_cmd import (check_sampling, load_generator, model_options, prompt_cache_option, sampling_options,
                      use_prompt_cache)

HELP = """\
/help            this list
/reset           forget the conversation (the system prompt stays)
/system [TEXT]   set the system prompt (no TEXT: show it; '-': remove it)
/stats           speed, speculation and time split of the last answer
/save FILE       save the conversation as JSON (/save! FILE overwrites)
/load FILE       load a saved conversation
/exit            leave (also Ctrl-D, or Ctrl-C twice at an empty prompt)
Enter sends; Esc Enter or a line ending in \\ starts a new line; pasted text keeps its lines.
Ctrl-C during an answer stops it (the partial answer stays in the conversation).
Start a message with // to send a literal /."""


def load_chat_generator(target, draft, drafter, tree, budget, threads, provider, shared_pool: bool):
    """`run`'s models, with the KV cache of the previous call's shared prefix reused, and the
    weights moved onto huge pages while the first prompt is typed (a long-lived process)."""
    gen = load_generator(target, draft, drafter, tree, budget, threads, provider, shared_pool, huge_pages=True)
    gen.reuse_cache = True
    return gen


class Renderer:
    """Writes a streamed answer. In colour, prose goes out as it arrives and each line inside a
    ``` fence is syntax-highlighted once it is complete; without colour, text goes out as is."""

    def __init__(self, out, color: bool, theme: str = "monokai"):
        self.out, self.color, self.theme = out, color, theme
        self.console = None
        if color:
            from rich.console import Console
            self.console = Console(file=out, force_terminal=True, highlight=False, soft_wrap=True)
        self.pending = ""  # start of a line that may be a fence, or an unfinished code line
        self.line_start = True
        self.code = None  # rich Syntax of the open code block

    def feed(self, text: str) -> None:
        if not text:
            return
        if not self.color:
            self.out.write(text)
        else:
            for part in text.splitlines(keepends=True):  # each part holds at most a final newline
                self._part(part)
        self.out.flush()

    def _part(self, part: str) -> None:
        if self.code is None and not self.line_start:  # the rest of a prose line
            self.out.write(part)
            self.line_start = part.endswith("\n")
            return
        self.pending += part
        line, complete = self.pending, self.pending.endswith("\n")
        head = line.lstrip()
        if self.code is None:
            if not complete and (head.startswith("```") or "```".startswith(head)):
                return  # maybe a fence: wait for the whole line
            if head.startswith("```"):
                from rich.syntax import Syntax
                self.code = Syntax("", head[3:].strip() or "text", theme=self.theme,
                                   background_color="default")
                self.console.print(line, style="dim", end="")
            else:
                self.out.write(line)
                self.line_start = complete
        else:
            if not complete:
                return
            if head.startswith("```"):
                self.code = None
                self.console.print(line, style="dim", end="")
            else:
                self.console.print(self.code.highlight(line), end="")
            self.line_start = True
        self.pending = ""

    def finish(self) -> None:
        """End the answer: flush held text, leave the cursor at the start of a line."""
        if self.pending:
            self.out.write(self.pending)
            self.line_start = self.pending.endswith("\n")
        elif not self.color:
            self.line_start = False  # not tracked when plain: always end with a newline
        if not self.line_start:
            self.out.write("\n")
        self.out.flush()
        self.pending, self.line_start, self.code = "", True, None


class _CtrlC:
    """During an answer, the first Ctrl-C only raises a flag (the loop stops at the next piece,
    leaving model state consistent); a second one interrupts for real."""

    def __enter__(self):
        self.hit = False
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def terminal_reader(history_file) -> Callable[[], str]:
    """prompt_toolkit line editor with history and multi-line input; raises EOFError on Ctrl-D
    and KeyboardInterrupt on Ctrl-C at an empty prompt (Ctrl-C with text clears the line)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event):
        buf = event.current_buffer
        if buf.document.is_cursor_at_the_end and buf.text.endswith("\\"):
            buf.delete_before_cursor(1)
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @keys.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    @keys.add("c-c")
    def _ctrl_c(event):
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    session = PromptSession(history=FileHistory(str(history_file)), multiline=True, key_bindings=keys,
                            prompt_continuation="... ")
    return lambda: session.prompt("you> ")


def plain_reader(stream=None) -> Callable[[], str]:
    """Lines from a pipe; a line ending in \\ continues on the next one. Bytes that are not
    UTF-8 arrive as lone surrogates, which the tokenizer refuses: a message, not a crash."""
    if stream is None:
        stream = sys.stdin
        stream.reconfigure(errors="surrogateescape")

    def read() -> str:
        lines = []
        while True:
            line = stream.readline()
            if not line:
                if lines:
                    return "\n".join(lines)
                raise EOFError
            line = line.rstrip("\n")
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            return "\n".join(lines)
    return read


class ChatApp:
    def __init__(self, chat: Chat, read: Callable[[], str], color: bool):
        from rich.console import Console
        self.chat = chat
        self.read = read
        self.color = color
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.commands = {
            "/help": self.cmd_help, "/reset": self.cmd_reset, "/system": self.cmd_system,
            "/stats": self.cmd_stats, "/save": self.cmd_save, "/save!": self.cmd_save_force,
            "/load": self.cmd_load, "/exit": self.cmd_exit, "/quit": self.cmd_exit,
        }

    def note(self, text: str, style: str = "dim") -> None:
        self.err.print(text, style=style, markup=False)

    def run(self) -> None:
        gen = self.chat.gen
        models = gen.target.path.name + (f" + draft {gen.draft.path.name}" if gen.draft is not None else "")
        self.note(f"edgespec chat: {models}, drafter {gen.drafter_name}, "
                  f"{gen.target.max_len}-token context. /help for commands, Ctrl-D to leave.")
        armed = False  # Ctrl-C was pressed at an empty prompt: a second one leaves
        while True:
            try:
                line = self.read()
            except KeyboardInterrupt:
                if armed:
                    break
                armed = True
                self.note("(Ctrl-C again or Ctrl-D to leave)")
                continue
            except EOFError:
                break
            armed = False
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if self.command(line.strip()) is False:
                    break
                continue
            self.answer(line[1:] if line.startswith("//") else line)
        self.note("bye")

    def command(self, line: str) -> bool | None:
        name, _, arg = line.partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            self.note(f"unknown command {name}; /help lists them (start with // to send a literal /)", "red")
            return None
        try:
            return handler(arg.strip())
        except (EdgespecError, OSError) as e:  # OSError: /save and /load on a path that fails
            self.note(str(e), "red")
            return None

    def answer(self, text: str) -> None:
        try:
            reply = self.chat.reply(text)
        except EdgespecError as e:  # ContextFull included
            self.note(str(e), "red")
            return
        if reply.dropped:
            self.note(f"context full: dropped the {reply.dropped} oldest turn(s) to make room "
                      f"(the system prompt is kept)", "yellow")
        out = Renderer(sys.stdout, self.color)
        try:
            with _CtrlC() as ctrl_c:
                try:
                    for piece in reply:
                        out.feed(piece)
                        if ctrl_c.hit:
                            break
                finally:
                    reply.close()
                    out.finish()
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: the reply is closed and its partial text kept all the same
        except EdgespecError as e:
            self.note(str(e), "red")
            return
        s = reply.stats
        ending = {
            "interrupted": "interrupted; the partial answer stays in the conversation",
            "context": "the context is full: answer cut; the oldest turns go next time",
            "length": f"stopped at --max-tokens {self.chat.max_tokens}",
        }.get(reply.finish_reason)
        summary = f"{s.new_tokens} tokens, {s.decode_tok_s:.1f} tok/s"
        if s.drafter != "none":
            summary += f", {s.accepted_per_pass:.2f} tok/pass ({s.drafter})"
        self.note(f"[{ending + '; ' if ending else ''}{summary}]")

    def cmd_help(self, arg):
        self.note(HELP, "")

    def cmd_reset(self, arg):
        self.chat.reset()
        self.note("conversation cleared (the system prompt stays)")

    def cmd_system(self, arg):
        if not arg:
            self.note(f"system prompt: {self.chat.system}" if self.chat.system else "no system prompt")
            return
        self.chat.system = None if arg == "-" else arg
        self.note("system prompt removed" if arg == "-" else "system prompt set")

    def cmd_stats(self, arg):
        self.note(format_stats(self.chat.last), "")
        self.note(f"conversation: {len(self.chat.messages)} messages, {self.chat.tokens()} of "
                  f"{self.chat.gen.target.max_len} context tokens", "")

    def cmd_save(self, arg, overwrite=False):
        if not arg:
            raise InputError("usage: /save FILE")
        path = self.chat.save(arg, overwrite=overwrite)
        self.note(f"saved {len(self.chat.messages)} messages to {path}")

    def cmd_save_force(self, arg):
        self.cmd_save(arg, overwrite=True)

    def cmd_load(self, arg):
        if not arg:
            raise InputError("usage: /load FILE")
        path = self.chat.load(arg)
        self.note(f"loaded {len(self.chat.messages)} messages from {path}"
                  + (" (with a system prompt)" if self.chat.system else ""))

    def cmd_exit(self, arg):
        return False


@click.command("chat")
@pass_invocation
@model_options
@sampling_options
@click.option("--system", default=None, help="system prompt")
@click.option("--color/--no-color", default=None,
              help="syntax colour for code blocks [default: when stdout is a terminal]")
@prompt_cache_option
def chat_command(invocation: Invocation, target, draft, drafter, tree, budget, threads, provider, max_tokens,
                 temperature, top_p, top_k, seed, system, color, prompt_cache):
    """Chat with a model in the terminal: multi-turn, streamed, /help for commands."""
    from ..contract.cache import cache_root
    check_sampling(temperature, top_p, top_k, seed)
    gen = load_chat_generator(target, draft, drafter, tree, budget, threads, provider, invocation.owns_process)
    use_prompt_cache(gen, prompt_cache)
    chat = Chat(gen, system=system, max_tokens=max_tokens,
                sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed))
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    read = terminal_reader(cache_root() / "chat_history") if interactive else plain_reader()
    ChatApp(chat, read, color=sys.stdout.isatty() if color is None else color).run()
