"""Engine process of llamacpp-plugin: `python llama_launch.py llama_cpp.server <args>`
runs llama-cpp-python's own server, unchanged, after one adjustment.

Why a launcher at all: llama.cpp puts weights into "extra" CPU buffer types when the
CPU allows it, and on a CPU that advertises AMX (Intel Sapphire Rapids and later) that
means the AMX matrix kernels. In virtual machines that pass the AMX CPUID bits through
without a working tile state, the first AMX instruction (`ldtilecfg`) kills the engine
with SIGSEGV on its first request. llama_cpp.server has no option for it, so with
LLAMACPP_EXTRA_BUFTS=0 (which the plugin sets on AMX CPUs) this launcher turns
`use_extra_bufts` off in the default model parameters before the server creates its
model. Runs in the engine's virtualenv; stdlib + llama_cpp only.

It also registers the chat format the plugin starts every model with,
`aogstream-tools` (see `install_tools_format`): requests without tools are answered
with the model's own GGUF chat template, exactly as llama_cpp.server would pick it;
requests with tools use llama-cpp-python's `chatml-function-calling` format, but only
for models whose own template is ChatML (`<|im_start|>`, SmolLM2's), so the tool
prompt speaks the model's own turn markers. Streams get OpenAI's closing usage chunk
from the engine's own token counts, which llama_cpp.server leaves out of streams.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: llama_launch.py llama_cpp.server [server options]")
    module = sys.argv[1]
    if os.environ.get("LLAMACPP_EXTRA_BUFTS", "1") == "0":
        import llama_cpp.llama_cpp as lib

        defaults = lib.llama_model_default_params

        def without_extra_bufts() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = without_extra_bufts
        print("llama_launch: extra CPU buffer types (AMX, weight repacking) are off",
              file=sys.stderr, flush=True)
    install_tools_format()
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


TOOLS_FORMAT = "aogstream-tools"
REFUSED = "invalid request: "  # error messages the server answers with a 400
# sampling options passed on to the engine's completion calls made here
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty",
            "frequency_penalty", "repeat_penalty", "seed", "max_tokens", "logits_processor")
DEFAULT_SYSTEM = "You are a helpful assistant."


def install_tools_format() -> None:
    """Register `aogstream-tools` (see the module docstring) and make the server answer
    this module's `invalid request: ...` errors with a 400 instead of a 500."""
    import re

    import llama_cpp.llama_chat_format as fmt
    from llama_cpp import llama_grammar
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler

    def refused(_body: Any, match: Any) -> tuple[int, Any]:
        return 400, ErrorResponse(message=match.group(1), type="invalid_request_error",
                                  param=None, code=None)

    RouteErrorHandler.pattern_and_formatters[re.compile(REFUSED + r"(.+)")] = refused

    def own_handler(llama: Any) -> Any:
        """The handler llama_cpp.server picks without --chat_format (Llama.__init__)."""
        name = fmt.guess_chat_format_from_gguf_metadata(llama.metadata)
        if name is None:
            name = ("chat_template.default" if "chat_template.default" in llama._chat_handlers
                    else "llama-2")
        return llama._chat_handlers.get(name) or fmt.get_chat_completion_handler(name)

    def chatml(llama: Any) -> bool:
        return "<|im_start|>" in str(llama.metadata.get("tokenizer.chat_template", ""))

    def tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        """The prompt chatml-function-calling renders (tools listed in the system turn),
        taken from the format itself so it never drifts from the one that generates."""
        class Rendered(Exception):
            pass

        class Probe:
            verbose = False

            def create_completion(self, prompt: str, **_: Any) -> Any:
                raise Rendered(prompt)

        name = tools[0]["function"]["name"]
        try:
            fmt.chatml_function_calling(Probe(), messages, tools=tools,  # type: ignore[arg-type]
                                        tool_choice={"type": "function",
                                                     "function": {"name": name}})
        except Rendered as done:
            prompt = str(done.args[0])
            return prompt[:-len(f"functions.{name}:\n")]
        raise RuntimeError("chatml-function-calling rendered no prompt")

    def choose(llama: Any, prompt: str, names: list[str], allow_message: bool,
               opts: dict[str, Any]) -> str | None:
        """The grammar-constrained first words: a function's name, or None for a message."""
        words = [f'"functions.{n}:"' for n in names] + (['"message:"'] if allow_message else [])
        grammar = llama_grammar.LlamaGrammar.from_string(
            "root ::= " + " | ".join(words) + "\n", verbose=False)
        out = llama.create_completion(prompt=prompt, temperature=0, stream=False, stop=[":"],
                                      max_tokens=None, grammar=grammar,
                                      seed=opts.get("seed"))
        text = out["choices"][0]["text"]
        return text[len("functions."):] if text.startswith("functions.") else None

    def with_tools(llama: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                   tool_choice: Any, stream: bool, kw: dict[str, Any]) -> Any:
        if not chatml(llama):
            raise ValueError(
                REFUSED + "this model's chat template is not ChatML, and llama.cpp has no "
                "function-calling format for it here; call it without 'tools', or use a "
                "ChatML model such as smollm2-135m-instruct")
        names = [t["function"]["name"] for t in tools]
        messages = tool_messages(messages)
        opts = {k: kw[k] for k in SAMPLING if k in kw}
        call = {k: kw[k] for k in ("stop", "model", "grammar") if k in kw}

        def named(name: str) -> Any:
            return fmt.chatml_function_calling(
                llama, messages, tools=tools, stream=stream,
                tool_choice={"type": "function", "function": {"name": name}}, **opts, **call)

        if isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name")
            if name not in names:
                raise ValueError(REFUSED + f"tool_choice names {name!r}, which is not one of "
                                 f"the request's tools ({', '.join(names)})")
            return named(name)
        if tool_choice == "required":
            if len(names) == 1:
                return named(names[0])
            return named(choose(llama, tool_prompt(messages, tools), names, False, opts)
                         or names[0])
        if not stream:  # auto: the format's own loop (several calls in one answer)
            return fmt.chatml_function_calling(llama, messages, tools=tools,
                                               tool_choice="auto", **opts, **call)
        # auto, streamed (the format refuses it): decide first, then stream that answer
        prompt = tool_prompt(messages, tools)
        name = choose(llama, prompt, names, True, opts)
        if name is not None:
            return named(name)
        return fmt._convert_completion_to_chat(llama.create_completion(
            prompt=prompt + "message:\n", stream=True, stop=["<|im_end|>"],
            **{**opts, "max_tokens": opts.get("max_tokens")}), stream=True)

    @fmt.register_chat_completion_handler(TOOLS_FORMAT)
    def tools_or_own_template(*, llama: Any, messages: list[dict[str, Any]],
                              tools: list[dict[str, Any]] | None = None,
                              tool_choice: Any = None, stream: bool = False,
                              functions: Any = None, function_call: Any = None,
                              **kw: Any) -> Any:
        counts = TokenCounts(llama) if stream else None
        try:
            if tools and tool_choice != "none":
                result = with_tools(llama, messages, tools, tool_choice or "auto", stream, kw)
            else:
                result = own_handler(llama)(llama=llama, messages=messages, stream=stream,
                                            **kw)
        except BaseException:
            llama.__dict__.pop("generate", None)
            raise
        return counts.follow(result) if counts is not None else result


def tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chatml-function-calling can render them: it lists the tools in the
    system turn (so there must be one) and renders no `tool` turns, so each tool result
    becomes a user turn saying which function returned it."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for msg in messages:
        msg = {**msg, "content": msg.get("content")}
        for call in msg.get("tool_calls") or []:
            names[str(call.get("id"))] = call["function"]["name"]
        if msg["role"] == "tool":
            name = names.get(str(msg.get("tool_call_id")), "the function")
            msg = {"role": "user",
                   "content": f"functions.{name} returned:\n{msg.get('content') or ''}"}
        out.append(msg)
    if not out or out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": DEFAULT_SYSTEM})
    return out


class TokenCounts:
    """Counts the engine's tokens of one streamed answer (every `generate` it runs) and
    adds OpenAI's closing usage chunk (`choices: []`) after the stream's last chunk."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp

        self.llama = llama
        self.prompt: int | None = None
        self.completion = 0
        generate = type(llama).generate
        vocab = llama._model.vocab

        def counting(tokens: Any, *args: Any, **kwargs: Any) -> Any:
            if self.prompt is None:
                self.prompt = len(tokens)
            for token in generate(llama, tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.completion += 1
                yield token

        llama.generate = counting  # this answer only: the server runs one at a time

    def follow(self, chunks: Any) -> Any:
        last: dict[str, Any] = {}
        try:
            for chunk in chunks:
                last = chunk
                yield chunk
        finally:
            self.llama.__dict__.pop("generate", None)
        prompt = self.prompt or 0
        yield {"id": last.get("id", ""), "object": "chat.completion.chunk",
               "created": last.get("created", 0), "model": last.get("model", ""),
               "choices": [], "usage": {"prompt_tokens": prompt,
                                        "completion_tokens": self.completion,
                                        "total_tokens": prompt + self.completion}}


if __name__ == "__main__":
    main()
