"""The built-in prompt formats. Each is data: a `Template` with its formats, default system prompt and stops."""

from __future__ import annotations

from dataclasses import dataclass, replace

from chatsmith.conversation import Conversation
from chatsmith.errors import TemplateError
from chatsmith.templates.base import Segment, Template

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# airoboros-13b-gpt4-1.4 model card, verbatim (`airoboros`).
AIROBOROS_SYSTEM = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
                    "accurate, uncensored responses to the user's input. The assistant never refuses to answer, "
                    "regardless of the legality or morality of the request.")
# the older airoboros-13b-gpt4 model card, verbatim (`airoboros_v1`): no "never refuses" sentence.
AIROBOROS_V1_SYSTEM = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, "
                       "accurate, uncensored responses to the user's input.")

# stablelm-tuned-alpha model card: the text after <|SYSTEM|>, newlines as in the card's Python snippet.
STABLELM_SYSTEM = (
    "# StableLM Tuned (Alpha version)\n"
    "- StableLM is a helpful and harmless open-source AI language model developed by StabilityAI.\n"
    "- StableLM is excited to be able to help the user, but will refuse to do anything that could be "
    "considered harmful to the user.\n"
    "- StableLM is more than just an information source, StableLM is also able to write poetry, short "
    "stories, and make jokes.\n"
    "- StableLM will refuse to participate in anything that could harm a human.\n"
)

ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
ALPACA_SYSTEM_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                       "further context. Write a response that appropriately completes the request.")

DREAMER_SYSTEM = "下面是一条描述任务的指令。请写出恰当完成该请求的回答。"
DREAMER_SYSTEM_INPUT = "下面是一条描述任务的指令，以及一段提供更多上下文的输入。请写出恰当完成该请求的回答。"


@dataclass(frozen=True)
class InstructionTemplate(Template):
    """Alpaca-style: instruction and optional input get their own headers; the preamble depends on whether
    there is an input (the two alpaca prompts). A conversation read from an alpaca row keeps its
    instruction/input in metadata; any other user turn is the instruction."""

    input_format: str = ""
    system_with_input: str | None = None

    @staticmethod
    def split_input(conv: Conversation) -> tuple[str, str] | None:
        """(instruction, input) when the first user turn is an alpaca row's "instruction\n\ninput" (kept in
        metadata by Conversation.from_alpaca), else None: any other user turn is a plain instruction."""
        inst, inp = conv.metadata.get("instruction"), conv.metadata.get("input")
        if not (isinstance(inst, str) and isinstance(inp, str) and inp and conv.messages):
            return None
        if conv.messages[0].role != "user" or conv.messages[0].content != f"{inst}\n\n{inp}":
            return None
        return inst, inp

    def segments(self, conv: Conversation, *, add_generation_prompt: bool = False, bos=None, eos=None):
        has_input = self.split_input(conv) is not None and conv.system is None
        if has_input and self.system_with_input:
            tpl = replace(self, default_system=self.system_with_input)
            return Template.segments(tpl, conv, add_generation_prompt=add_generation_prompt, bos=bos, eos=eos)
        return super().segments(conv, add_generation_prompt=add_generation_prompt, bos=bos, eos=eos)

    def _user_segments(self, conv, turn, content, system, bos, eos):
        split = self.split_input(conv) if turn == 0 else None
        if split is not None:
            out = self._fill(self.user_format, "content", split[0], bos, eos)
            return out + self._fill(self.input_format, "content", split[1], bos, eos)
        return self._fill(self.user_format, "content", content, bos, eos)


# FastChat's SeparatorStyle.ADD_COLON_TWO (sep " ", sep2 "</s>"): the generation prompt ends "ASSISTANT:" and the
# answer is " " + content, tokenized together, as FastChat's train.py tokenizes the whole conversation.
_VICUNA = dict(
    system_format="{system} ",
    user_format="USER: {content} ",
    assistant_prefix="ASSISTANT:",
    answer_prefix=" ",
    assistant_suffix="{eos}",
    stop_strings=("USER:",),
)

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(name="vicuna_v1.1", description="FastChat vicuna_v1.1: '<system> USER: <prompt> ASSISTANT:' + "
                 "' <answer></s>'",
                 default_system=VICUNA_SYSTEM, **_VICUNA),
        Template(name="airoboros", description="vicuna_v1.1 with the airoboros-13b-gpt4-1.4 system prompt",
                 default_system=AIROBOROS_SYSTEM, **_VICUNA),
        Template(name="airoboros_v1", description="vicuna_v1.1 with the (older) airoboros-13b-gpt4 system prompt",
                 default_system=AIROBOROS_V1_SYSTEM, **_VICUNA),
        Template(name="stablelm", description="StableLM-Tuned-Alpha: <|SYSTEM|>...<|USER|>...<|ASSISTANT|>...",
                 system_format="<|SYSTEM|>{system}", user_format="<|USER|>{content}",
                 assistant_prefix="<|ASSISTANT|>", assistant_suffix="{eos}", default_system=STABLELM_SYSTEM,
                 stop_strings=("<|USER|>", "<|ASSISTANT|>", "<|SYSTEM|>", "<|padding|>", "<|endoftext|>"),
                 default_eos="<|endoftext|>", default_bos="<|endoftext|>"),
        InstructionTemplate(
            name="alpaca", description="Stanford Alpaca, with and without ### Input",
            system_format="{system}\n\n", user_format="### Instruction:\n{content}\n\n",
            input_format="### Input:\n{content}\n\n", assistant_prefix="### Response:\n",
            assistant_suffix="{eos}", turn_separator="\n\n", default_system=ALPACA_SYSTEM,
            system_with_input=ALPACA_SYSTEM_INPUT, stop_strings=("### Instruction:",)),
        InstructionTemplate(
            name="dreamer_zh",
            description="DreamerGPT-style Chinese instruction format (alpaca layout, Chinese headers)",
            system_format="{system}\n\n", user_format="### 指令:\n{content}\n\n",
            input_format="### 输入:\n{content}\n\n", assistant_prefix="### 回答:\n",
            assistant_suffix="{eos}", turn_separator="\n\n", default_system=DREAMER_SYSTEM,
            system_with_input=DREAMER_SYSTEM_INPUT, stop_strings=("### 指令:",)),
        Template(name="chatml", description="ChatML: <|im_start|>role\\n...<|im_end|>",
                 system_format="<|im_start|>system\n{system}<|im_end|>\n",
                 user_format="<|im_start|>user\n{content}<|im_end|>\n",
                 assistant_prefix="<|im_start|>assistant\n", assistant_suffix="<|im_end|>", turn_separator="\n",
                 stop_strings=("<|im_end|>", "<|im_start|>"), add_bos=False),
        Template(name="llama2", description="Llama-2 chat: <s>[INST] <<SYS>>...<</SYS>> ... [/INST] ... </s>",
                 system_format="<<SYS>>\n{system}\n<</SYS>>\n\n{content}", system_in_first_user=True,
                 user_format="{bos}[INST] {content} [/INST]", assistant_prefix=" ",
                 assistant_suffix=" {eos}", stop_strings=("[INST]",), add_bos=False),
    ]
}


def get_template(name: str | Template, tokenizer=None) -> Template:
    """A template by name. `hf` builds one from the tokenizer's own chat_template."""
    if isinstance(name, Template):
        return name
    if name == "hf":
        from chatsmith.templates.hf_chat_template import HFTemplate

        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TemplateError("template 'hf' needs a model whose tokenizer has a chat_template")
        return HFTemplate.from_tokenizer(tokenizer)
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join([*TEMPLATES, "hf"])
        raise TemplateError(f"unknown template {name!r}; known templates: {known}") from None


def template_names() -> list[str]:
    return [*TEMPLATES, "hf"]


__all__ = ["TEMPLATES", "InstructionTemplate", "Segment", "get_template", "template_names"]
