"""Write chatsmith's bundled sample data (we write it ourselves: the seeds' data sets are not redistributable).

    python -m chatsmith.data.samples.make_samples [OUT_DIR]     # default: this folder

Deterministic (fixed seeds): running it again writes the same bytes. Files, each in a format prepare reads:

  contextual.jsonl          airoboros {instruction, response, category}: closed-context questions over 1-3
                            made-up documents (BEGININPUT ... ENDINSTRUCTION), written by closed_context.py; the
                            answer is the sentence of the document that holds it, then "Source:" and that
                            document's metadata lines; a third ask what no document holds (a missing fact, a person
                            or place named but not described, an opinion, an entity no document describes, a fact
                            another document gives about another entity) and the answer says so, citing nothing
  instructions_en.jsonl     airoboros: trivia, multiple choice ("C, Pluto"), jokes, riddles, anagrams, word
                            lists, and coding answers in PLAINFORMAT (the answer is only code; the Python ones
                            come from plainformat.py, where each has unit tests)
  instructions_zh.jsonl     alpaca {instruction, input, output}, DreamerGPT-style Chinese rows
  multiturn.jsonl           sharegpt {conversations: [{from, value}]}: English and Chinese multi-turn chats
  chat_openai.jsonl         openai {messages}: rows with a system prompt
  heldout_contextual.jsonl  NOT training data: 48 closed-context eval items (20 unanswerable) {id, category,
                            prompt, reference, answer_span, source, answerable, question_kind, documents} from
                            closed_context's held-out world (its own names, kinds of entity, facts and wordings)
  heldout_code.jsonl        NOT training data: PLAINFORMAT Python eval items with unit tests, asking for other
                            functions than the training rows
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from chatsmith.closed_context import Document, build_context
from chatsmith.data.samples import closed_context
from chatsmith.data.samples.plainformat import TRAIN_PYTHON, heldout_code_items
from chatsmith.outputs import atomic_file

HERE = Path(__file__).parent
TRAIN_FILES = ("contextual.jsonl", "instructions_en.jsonl", "instructions_zh.jsonl", "multiturn.jsonl",
               "chat_openai.jsonl")
HELDOUT_FILE = "heldout_contextual.jsonl"
HELDOUT_CODE_FILE = "heldout_code.jsonl"
N_CONTEXTUAL = 400                    # training rows (plus the model card's blueberry example)
# the share of them in minimal pairs, and the unanswerable share of the rest (closed_context.train_rows), chosen
# by runs listed in issue 13's note: 45% unanswerable singles (with 40% pairs) made the tuned model abstain on
# answerable new questions it could answer; fewer moved it toward answering, at some cost in abstaining
CONTEXTUAL_PAIRED, CONTEXTUAL_UNANSWERABLE = 0.3, 0.3
N_HELDOUT, N_HELDOUT_UNANSWERABLE = 48, 20

BLUEBERRIES = {
    "id": "ctx-blueberries", "category": "contextual",
    "instruction": build_context([Document("In a shocking turn of events, blueberries are now green, but will be "
                                           "sticking with the same name.",
                                           {"date": "2021-01-01", "url": "https://web.site/123"})],
                                 "What color are bluberries?  Source?"),
    "response": "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123",
}

# ---- general English instructions ---------------------------------------------------------------------
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Brazil", "Brasília"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Norway", "Oslo"),
            ("Peru", "Lima"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("India", "New Delhi"),
            ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Turkey", "Ankara")]
ELEMENTS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"),
            ("lead", "Pb"), ("copper", "Cu"), ("tin", "Sn"), ("mercury", "Hg"), ("helium", "He"), ("oxygen", "O"),
            ("carbon", "C")]
BOOKS = [("Pride and Prejudice", "Jane Austen"), ("Moby-Dick", "Herman Melville"), ("1984", "George Orwell"),
         ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"), ("Hamlet", "William Shakespeare"),
         ("The Odyssey", "Homer"), ("Frankenstein", "Mary Shelley"), ("Jane Eyre", "Charlotte Brontë"),
         ("The Old Man and the Sea", "Ernest Hemingway")]
MC = [
    ("Which of the following astronomical objects is composed primarily of ice and rock, and is located in the "
     "Kuiper Belt?", ["Mercury", "Venus", "Pluto", "Jupiter"], 2),
    ("Which planet is known as the Red Planet?", ["Mars", "Saturn", "Neptune", "Venus"], 0),
    ("Which gas do plants absorb from the air for photosynthesis?", ["Oxygen", "Nitrogen", "Carbon dioxide",
                                                                      "Helium"], 2),
    ("What is the largest ocean on Earth?", ["Atlantic Ocean", "Indian Ocean", "Arctic Ocean", "Pacific Ocean"], 3),
    ("Which organ pumps blood through the human body?", ["Liver", "Heart", "Lungs", "Kidneys"], 1),
    ("How many sides does a hexagon have?", ["Five", "Six", "Seven", "Eight"], 1),
    ("Which instrument has 88 keys?", ["Violin", "Flute", "Piano", "Trumpet"], 2),
    ("What is the boiling point of water at sea level in degrees Celsius?", ["90", "100", "110", "120"], 1),
]
JOKES = [
    ("Tell me a joke about computers.", "Why did the computer go to the doctor? Because it had a virus!"),
    ("Tell me a joke about math.", "Why was the math book sad? Because it had too many problems."),
    ("Do you know any jokes about cats?", "What do you call a pile of cats? A meowtain."),
    ("Tell me a joke about the ocean.", "Why does the ocean never gossip? Because its secrets run too deep."),
    ("Tell me a joke about coffee.", "How does a coffee bean say goodbye? Brew you later!"),
    ("Tell me a joke about skeletons.", "Why don't skeletons fight each other? They don't have the guts."),
    ("Tell me a joke about bicycles.", "Why can't a bicycle stand up by itself? Because it's two tired."),
    ("Tell me a joke about bakers.", "Why did the baker go to therapy? He kneaded it."),
]
RIDDLES = [
    ("What has keys but can't open locks?", "A piano."),
    ("What has hands but cannot clap?", "A clock."),
    ("What gets wetter the more it dries?", "A towel."),
    ("What has a neck but no head?", "A bottle."),
    ("I speak without a mouth and hear without ears. I have no body, but I come alive with wind. What am I?",
     "An echo."),
    ("What can travel around the world while staying in a corner?", "A stamp."),
]
ANAGRAMS = [("silent", "listen", "what you do when paying attention and hearing someone"),
            ("earth", "heart", "the organ that pumps blood"),
            ("night", "thing", "an object you can't name"),
            ("dusty", "study", "what students do before an exam"),
            ("cinema", "iceman", "a frozen man"),
            ("below", "elbow", "the joint in the middle of your arm")]
WORDS = {"EN": ["Endlessly", "Enthusiastically", "Enormously", "Enveloping", "Enduring", "Enlightening",
                "Encouraging"],
         "UN": ["Unusual", "Understand", "Uncover", "Unlock", "Universe", "Unique", "Untangle"],
         "PRE": ["Prepare", "Predict", "Present", "Prevent", "Preview", "Premium", "Prefer"],
         "TR": ["Travel", "Treasure", "Triangle", "Trust", "Tribute", "Tropical", "Trumpet"]}

# PLAINFORMAT answers in other languages than Python (which plainformat.TRAIN_PYTHON holds, with tests)
OTHER_CODE = [
    ("Write a Python script that reads a text file and prints the number of lines.",
     "import sys\n\nwith open(sys.argv[1], encoding=\"utf-8\") as f:\n    print(sum(1 for _ in f))"),
    ("Write a JavaScript function that returns the largest number in an array.",
     "function largest(numbers) {\n  return Math.max(...numbers);\n}"),
    ("Write a JavaScript function that capitalizes the first letter of a string.",
     "function capitalize(text) {\n  return text.charAt(0).toUpperCase() + text.slice(1);\n}"),
    ("Write a JavaScript function that checks whether a string is a palindrome.",
     "function isPalindrome(text) {\n  const s = text.toLowerCase().replace(/[^a-z0-9]/g, \"\");\n"
     "  return s === s.split(\"\").reverse().join(\"\");\n}"),
    ("Write a websocket echo server in node.js using the ws package.",
     "const WebSocket = require(\"ws\");\n\nconst server = new WebSocket.Server({ port: 8080 });\n\n"
     "server.on(\"connection\", (socket) => {\n  socket.on(\"message\", (message) => {\n    socket.send(message);\n"
     "  });\n});"),
    ("Write a SQL query that returns the ten most recent orders from an orders table.",
     "SELECT *\nFROM orders\nORDER BY created_at DESC\nLIMIT 10;"),
    ("Write a Bash script that prints the numbers from 1 to 10.",
     "#!/bin/bash\nfor i in $(seq 1 10); do\n  echo \"$i\"\ndone"),
]
CODE = [(q, code) for q, code, _ in TRAIN_PYTHON] + OTHER_CODE


def english_rows(rng: random.Random) -> list[dict]:
    rows: list[dict] = []

    def add(cat: str, q: str, a: str) -> None:
        rows.append({"id": f"en-{len(rows) + 1:03d}", "instruction": q, "response": a, "category": cat})

    for country, city in CAPITALS:
        add("trivia", rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                                  "Name the capital city of {c}."]).format(c=country),
            f"The capital of {country} is {city}.")
    for element, sym in ELEMENTS:
        add("trivia", f"What is the chemical symbol for {element}?", f"The chemical symbol for {element} is {sym}.")
    for book, author in BOOKS:
        add("trivia", f"Who wrote \"{book}\"?", f"\"{book}\" was written by {author}.")
    letters = "ABCD"
    for q, options, right in MC:
        opts = "\n".join(f"{letters[i]}) {o}" for i, o in enumerate(options))
        add("multiple_choice", f"{q}\n\n{opts}", f"{letters[right]}, {options[right]}")
    for element, sym in ELEMENTS[:6]:  # generated multiple choice
        wrong = rng.sample([s for _, s in ELEMENTS if s != sym], 3)
        options = wrong[:]
        pos = rng.randint(0, 3)
        options.insert(pos, sym)
        opts = "\n".join(f"{letters[i]}) {o}" for i, o in enumerate(options))
        add("multiple_choice", f"Which of the following is the chemical symbol for {element}?\n\n{opts}",
            f"{letters[pos]}, {sym}")
    for q, a in JOKES:
        add("joke", q, a)
    for q, a in RIDDLES:
        add("riddle", q, a)
    for word, answer, hint in ANAGRAMS:
        add("wordgame", f"This anagram of \"{word}\" is {hint}.", answer)
    for prefix, words in WORDS.items():
        n = rng.choice([5, 6, 7])
        add("wordgame", f"Give me a list of {n} words that start with {prefix}",
            "\n".join(f"{i}. {w}" for i, w in enumerate(words[:n], 1)))
    for q, code in CODE:
        add("coding", f"{q} PLAINFORMAT", code)
    for _ in range(12):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        op, sym, val = rng.choice([("plus", "+", a + b), ("times", "*", a * b), ("minus", "-", a - b)])
        add("math", f"What is {a} {op} {b}?", f"{a} {sym} {b} = {val}")
    return rows


# ---- Chinese (DreamerGPT-style alpaca rows) -----------------------------------------------------------
ZH_CAPITALS = [("中国", "北京"), ("日本", "东京"), ("法国", "巴黎"), ("英国", "伦敦"), ("德国", "柏林"),
               ("意大利", "罗马"), ("俄罗斯", "莫斯科"), ("埃及", "开罗"), ("加拿大", "渥太华"), ("澳大利亚", "堪培拉"),
               ("韩国", "首尔"), ("泰国", "曼谷")]
ZH_TRANSLATE = [("I like reading books.", "我喜欢读书。"), ("The weather is nice today.", "今天天气很好。"),
                ("Where is the train station?", "火车站在哪里？"), ("Thank you for your help.", "谢谢你的帮助。"),
                ("She is a doctor.", "她是一名医生。"), ("We are going to the park tomorrow.", "我们明天去公园。"),
                ("This apple is very sweet.", "这个苹果很甜。"), ("Please close the window.", "请把窗户关上。"),
                ("My brother plays football.", "我的哥哥踢足球。"), ("How much does this cost?", "这个多少钱？")]
ZH_COUPLETS = [("春风得意马蹄疾", "秋月无边雁影长"), ("海阔凭鱼跃", "天高任鸟飞"), ("山清水秀风光好", "人寿年丰喜事多"),
               ("一帆风顺年年好", "万事如意步步高"), ("书山有路勤为径", "学海无涯苦作舟")]
ZH_ADVICE = [
    ("如何提高睡眠质量？",
     "1. 保持规律的作息时间。\n"
     "2. 睡前一小时不要使用手机。\n"
     "3. 卧室保持安静、黑暗和凉爽。\n"
     "4. 晚上避免喝咖啡和浓茶。"),
    ("怎样才能更好地管理时间？",
     "1. 每天列出要做的事情并排好优先级。\n"
     "2. 把大任务拆成小步骤。\n"
     "3. 减少干扰，专注完成一件事。\n"
     "4. 每天结束时回顾进度。"),
    ("学习一门新语言有什么好方法？",
     "1. 每天坚持练习，哪怕只有十五分钟。\n"
     "2. 多听多说，不要害怕犯错。\n"
     "3. 用新语言阅读简单的故事。\n"
     "4. 找一个语言伙伴互相练习。"),
    ("如何缓解工作压力？",
     "1. 适当运动，比如散步或跑步。\n"
     "2. 和朋友或家人聊聊天。\n"
     "3. 合理安排工作，避免拖延。\n"
     "4. 保证充足的睡眠。"),
    ("请给出保护环境的三条建议。",
     "1. 减少使用一次性塑料制品。\n"
     "2. 节约用水用电。\n"
     "3. 多乘坐公共交通或骑自行车出行。"),
]


def chinese_rows(rng: random.Random) -> list[dict]:
    rows: list[dict] = []

    def add(instruction: str, inp: str, output: str) -> None:
        rows.append({"id": f"zh-{len(rows) + 1:03d}", "instruction": instruction, "input": inp, "output": output})

    for country, city in ZH_CAPITALS:
        question = rng.choice(["{c}的首都是哪里？", "请告诉我{c}的首都。"]).format(c=country)
        add(question, "", f"{country}的首都是{city}。")
    for en, zh in ZH_TRANSLATE:
        add("把下面的句子翻译成中文。", en, zh)
        add("把下面的句子翻译成英文。", zh, en)
    for up, down in ZH_COUPLETS:
        add("根据上联对出下联。", f"上联：{up}", f"下联：{down}")
    for q, a in ZH_ADVICE:
        add(q, "", a)
    for _ in range(12):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            add(f"计算 {a} 加 {b} 等于多少？", "", f"{a} 加 {b} 等于 {a + b}。")
        else:
            add(f"计算 {a} 乘以 {b} 等于多少？", "", f"{a} 乘以 {b} 等于 {a * b}。")
    sentences = {"苹果": "我每天早上吃一个苹果。", "书": "这本书讲了一个有趣的故事。",
                 "猫": "我家的猫喜欢在阳台上晒太阳。", "朋友": "周末我和朋友一起去爬山。"}
    for word, sentence in sentences.items():
        add("用下面的词语造一个句子。", word, sentence)
    return rows


# ---- multi-turn and system-prompt rows ----------------------------------------------------------------
def multiturn_rows(rng: random.Random) -> list[dict]:
    rows = []
    pairs = CAPITALS[:]
    rng.shuffle(pairs)
    for i in range(0, 12, 2):
        (c1, k1), (c2, k2) = pairs[i], pairs[i + 1]
        rows.append([("human", f"What is the capital of {c1}?"), ("gpt", f"The capital of {c1} is {k1}."),
                     ("human", f"And what about {c2}?"), ("gpt", f"The capital of {c2} is {k2}.")])
    for _ in range(8):
        a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(5, 50)
        rows.append([("human", f"What is {a} times {b}?"), ("gpt", f"{a} times {b} is {a * b}."),
                     ("human", f"Now add {c} to that."), ("gpt", f"{a * b} plus {c} is {a * b + c}."),
                     ("human", "Thanks!"), ("gpt", "You're welcome! Let me know if you need anything else.")])
    for (q, a), (_q2, a2) in zip(JOKES[::2], JOKES[1::2]):   # the second joke answers "Another one?"
        rows.append([("human", q), ("gpt", a), ("human", "That's funny. Another one?"), ("gpt", a2)])
    zh = ZH_CAPITALS[:]
    rng.shuffle(zh)
    for i in range(0, 8, 2):
        (c1, k1), (c2, k2) = zh[i], zh[i + 1]
        rows.append([("human", f"{c1}的首都是哪里？"), ("gpt", f"{c1}的首都是{k1}。"),
                     ("human", f"那{c2}呢？"), ("gpt", f"{c2}的首都是{k2}。")])
    for q, code in CODE[:4]:
        rows.append([("human", q), ("gpt", f"Here is one way to do it:\n\n```\n{code}\n```"),
                     ("human", "Can you give me only the code?"), ("gpt", code)])
    return [{"id": f"mt-{i + 1:03d}", "conversations": [{"from": w, "value": v} for w, v in turns]}
            for i, turns in enumerate(rows)]


SYSTEMS = ["You are a concise assistant. Answer in one sentence.", "You are a friendly tutor for children.",
           "你是一个乐于助人的中文助手。"]


def openai_rows(rng: random.Random) -> list[dict]:
    rows = []
    for country, city in CAPITALS[:6]:
        rows.append((SYSTEMS[0], f"Capital of {country}?", f"{city} is the capital of {country}."))
    for element, sym in ELEMENTS[:5]:
        rows.append((SYSTEMS[1], f"What letters stand for {element} in chemistry?",
                     f"Great question! Chemists write {element} as {sym}."))
    for country, city in ZH_CAPITALS[:5]:
        rows.append((SYSTEMS[2], f"{country}的首都是什么？", f"{country}的首都是{city}。"))
    return [{"id": f"oa-{i + 1:03d}", "messages": [{"role": "system", "content": s}, {"role": "user", "content": u},
                                                   {"role": "assistant", "content": a}]}
            for i, (s, u, a) in enumerate(rows)]


# ---- writing ------------------------------------------------------------------------------------------
def closed_context_sets() -> tuple[list[dict], list[dict], closed_context.World, closed_context.World]:
    """(training rows, held-out items, training world, held-out world): the worlds know every name they made."""
    taken: set[str] = set()      # keeps entity names unique across both worlds (their syllables already differ)
    train_world, heldout_world = closed_context.train_world(), closed_context.heldout_world()
    ctx = closed_context.train_rows(random.Random(1), N_CONTEXTUAL, taken, train_world, paired=CONTEXTUAL_PAIRED,
                                     unanswerable=CONTEXTUAL_UNANSWERABLE) + [BLUEBERRIES]
    heldout = closed_context.heldout_items(random.Random(2), N_HELDOUT, N_HELDOUT_UNANSWERABLE, taken, heldout_world)
    return ctx, heldout, train_world, heldout_world


def build() -> dict[str, list[dict]]:
    ctx, heldout, _, _ = closed_context_sets()
    return {"contextual.jsonl": ctx,
            "instructions_en.jsonl": english_rows(random.Random(3)),
            "instructions_zh.jsonl": chinese_rows(random.Random(4)),
            "multiturn.jsonl": multiturn_rows(random.Random(5)),
            "chat_openai.jsonl": openai_rows(random.Random(6)),
            HELDOUT_FILE: heldout,
            HELDOUT_CODE_FILE: heldout_code_items()}


def write(out: Path = HERE) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in build().items():
        with atomic_file(out / name) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts[name] = len(rows)
    return counts


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, n in write(target).items():
        print(f"{target / name}: {n} rows")
