"""The built-in chat templates, as Jinja sources in the Hugging Face `chat_template` convention.

The converter embeds one of them into a GGUF whose checkpoint ships no template (Atom and Llama2-Chinese
ship none, and llama.cpp-based tools would then fall back to ChatML, which these models do not speak).
The runtime renders the same sources (lcpp_zh.templates), so every template lives here once.
Plain data and name matching only: no Jinja, no llama.cpp import.
"""

from __future__ import annotations

# FlagAlpha/Atom format (Llama-Chinese README, accelerate_server.py): every turn is `<s>{Role}: {text}\n</s>`,
# where <s> and </s> are the BOS/EOS control tokens, and the prompt ends with `<s>Assistant: `.
LLAMA2_CHINESE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ bos_token + 'System: ' + message['content'] + '\\n' + eos_token }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ bos_token + 'Human: ' + message['content'] + '\\n' + eos_token }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ bos_token + 'Assistant: ' + message['content'] + '\\n' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ bos_token + 'Assistant: ' }}{%- endif -%}"
)

# Meta's canonical Llama 2 chat format (llama/generation.py): the system prompt is folded into the first
# user turn, contents are stripped, an answer is ` {answer} </s>`.
LLAMA2 = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] | trim -%}"
    "{%- else -%}{%- set content = message['content'] | trim -%}{%- endif -%}"
    "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Stanford Alpaca's instruction format; a system message replaces the default preamble.
ALPACA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ bos_token + messages[0]['content'] + '\\n\\n' }}{%- set turns = messages[1:] -%}"
    "{%- else -%}{{ bos_token }}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
)

# Vicuna v1.1 (FastChat conversation template `vicuna_v1.1`).
VICUNA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' -%}"
    "{%- set turns = messages -%}{%- endif -%}"
    "{{ bos_token + system }}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ ' USER: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ASSISTANT: ' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "llama2-chinese": LLAMA2_CHINESE,
    "llama2": LLAMA2,
    "chatml": CHATML,
    "alpaca": ALPACA,
    "vicuna": VICUNA,
}

# Text that ends an answer besides the end-of-generation token: a model that starts the next turn itself.
STOP_STRINGS: dict[str, list[str]] = {
    "llama2-chinese": ["Human:", "</s>"],
    "llama2": ["[INST]", "</s>"],
    "chatml": ["<|im_end|>", "<|im_start|>"],
    "alpaca": ["### Instruction:"],
    "vicuna": ["USER:", "</s>"],
}

# Names by which FlagAlpha's Chinese Llama 2 models are recognised: repo ids, folder names, `_name_or_path`.
_LLAMA2_CHINESE_MARKERS = ("flagalpha", "atom-7b", "atom-1b", "atom-13b", "llama2-chinese", "llama-2-chinese")


def detect_template_name(*model_names: str | None) -> str | None:
    """The built-in template a model needs, judged by its names, or None when no rule matches."""
    for name in model_names:
        lowered = (name or "").lower().replace("_", "-")
        if any(marker in lowered for marker in _LLAMA2_CHINESE_MARKERS):
            return "llama2-chinese"
    return None
