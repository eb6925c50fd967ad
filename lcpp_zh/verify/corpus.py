"""The built-in strings `lcpp-zh verify` tokenizes with both tokenizers.

Chinese, English, mixed, emoji, digits, whitespace runs and special-token strings, each in a few
variants (leading space, trailing newline, doubled), over a thousand strings in all.
"""

from __future__ import annotations

_BASE = [
    "如何向一个六岁的孩子解释什么是机器学习？",
    "我要拍一个做红烧肉的短视频，请给我一个拍短视频的脚本",
    "你好，世界！",
    "大模型推理时需要采用简单的交互界面进行对话。",
    "北京是中国的首都，上海是最大的城市。",
    "今天天气很好，我们去公园散步吧。",
    "请用三句话总结《红楼梦》的主要内容。",
    "机器学习就是让电脑变得更聪明的一种方法。",
    "中华人民共和国成立于1949年10月1日。",
    "龘靐齉爩：生僻字测试。",
    "繁體中文與簡體中文混合測試",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "Machine learning is a field of artificial intelligence.",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it.",
    "def main():\n    print('hello')\n",
    "https://huggingface.co/FlagAlpha/Atom-7B-Chat",
    "我在apple工作了1314151天～",
    "Llama 2 中文模型 Atom-7B 支持 4096 个 token 的上下文。",
    "价格是 ¥128.50，折扣 15%。",
    "表情：😀😁🦙🚀✅ 😶‍🌫️",
    "🦙🦙🦙 llama 羊驼",
    "3 33 333 3333 33333 3.14159 2026-11-25",
    "Ünïcödé façade naïve café",
    "нещо на Български",
    "日本語のテキストも少し。",
    "한국어 텍스트",
    "   leading spaces",
    "trailing spaces   ",
    "\t tabs\tand\nnewlines\n\n",
    "\n\n\n",
    " ",
    "  ",
    "a",
    "中",
    "Human: 你好\nAssistant: 你好！有什么可以帮你？",
    "<s>Human: 你好\n</s><s>Assistant: ",
    "</s>",
    "<s>",
    "<unk>",
    "<|im_start|>user\nhi<|im_end|>",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nhi [/INST]",
    "------======= ......!!!!!!??????",
    "''''''```````\"\"\"\"",
    "ｆｕｌｌｗｉｄｔｈ　全角空格",
    "「引号」『书名』——破折号……省略号",
    "1+1=2，2×3=6，10÷2=5",
    "E=mc²，H₂O，∑∫√∞",
]

_VARIANTS = (
    lambda s: s,
    lambda s: " " + s,
    lambda s: s + "\n",
    lambda s: s + " " + s,
    lambda s: s.upper(),
    lambda s: s.replace("，", ", "),
    lambda s: "  " + s + "  ",
    lambda s: s + "。" + s[::-1],
    lambda s: "\n" + s,
    lambda s: s[: len(s) // 2],
    lambda s: s[len(s) // 2 :],
    lambda s: s.replace(" ", "  "),
)


def builtin_corpus(extra_tokens: list[str] = ()) -> list[str]:
    """The verify corpus, with the model's added tokens in and around text."""
    strings: list[str] = []
    for base in _BASE:
        strings.extend(variant(base) for variant in _VARIANTS)
    for shift in range(1, 14):  # pairs join scripts, punctuation and whitespace in new ways
        for i, a in enumerate(_BASE):
            strings.append(a + _BASE[(i + shift) % len(_BASE)])
    for token in extra_tokens:
        strings.extend([token, f"你好{token}世界", f"hello {token} world", f"{token}{token}"])
    seen: set[str] = set()
    return [s for s in strings if s and not (s in seen or seen.add(s))]
