"""Write chatsmith's bundled sample data (we write it ourselves: the seeds' data sets are not redistributable).

    python -m chatsmith.data.samples.make_samples [OUT_DIR]     # default: this folder

Deterministic (fixed seeds): running it again writes the same bytes. Files, each in a format prepare reads:

  contextual.jsonl          airoboros {instruction, response, category, system?}: closed-context questions over
                            1-3 made-up documents (BEGININPUT ... ENDINSTRUCTION); the answer is the sentence of
                            the document that holds it, then "Source:" and that document's metadata lines; when
                            no document holds the answer, the answer says so and cites nothing
  instructions_en.jsonl     airoboros: trivia, multiple choice ("C, Pluto"), jokes, riddles, anagrams, word
                            lists, and coding answers in PLAINFORMAT (the answer is only code)
  instructions_zh.jsonl     alpaca {instruction, input, output}, DreamerGPT-style Chinese rows
  multiturn.jsonl           sharegpt {conversations: [{from, value}]}: English and Chinese multi-turn chats
  chat_openai.jsonl         openai {messages}: rows with a system prompt
  heldout_contextual.jsonl  NOT training data: 30 closed-context eval items {id, category, prompt, reference,
                            source, answerable, documents} over entities that appear in no training row
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from chatsmith.context import Document, build_context

HERE = Path(__file__).parent
TRAIN_FILES = ("contextual.jsonl", "instructions_en.jsonl", "instructions_zh.jsonl", "multiturn.jsonl",
               "chat_openai.jsonl")
HELDOUT_FILE = "heldout_contextual.jsonl"

# ---- made-up entities for closed-context questions ------------------------------------------------------
_SYL = ["ka", "lo", "ven", "tor", "mi", "sa", "rel", "dun", "qua", "bri", "zel", "mor", "ta", "fen", "lix", "ora",
        "pel", "gru", "sto", "vin", "dra", "nel", "cor", "hul", "ist", "jam", "wex", "yor", "plin", "tesk"]
_FIRST = ["Mara", "Tobin", "Elsa", "Iker", "Nadia", "Oskar", "Priya", "Rufus", "Selma", "Teodor", "Una", "Viktor",
          "Wren", "Yusuf", "Zora", "Anouk", "Bram", "Cleo", "Dario", "Edda", "Faris", "Greta", "Hiro", "Ilse"]
_COLORS = ["green", "orange", "violet", "silver", "crimson", "teal", "amber", "indigo", "golden", "turquoise"]
_ANIMALS = ["heron", "otter", "lynx", "badger", "falcon", "tortoise", "salamander", "moth", "ibis", "marten"]
_PRODUCTS = ["solar kettles", "folding bicycles", "water filters", "paper batteries", "wind chimes", "smart hinges",
             "ceramic drones", "moss lamps", "glass keyboards", "cork helmets"]
_DISHES = ["smoked pear soup", "barley pancakes", "honey dumplings", "saffron bread", "pickled plum tarts",
           "chestnut stew", "mint noodles", "fig fritters"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_HABITATS = ["cloud forests", "salt marshes", "limestone caves", "alpine meadows", "mangrove swamps", "river deltas"]
_DIETS = ["beetles", "wild figs", "algae", "snails", "pine seeds", "nectar"]
_SECTIONS = ["news", "science", "business", "culture", "blog", "articles", "reports", "local"]
_TLDS = ["com", "net", "org", "news", "info"]


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {_name(rng, rng.choice([2, 3]))}"


def _entity(rng: random.Random, taken: set[str]) -> dict:
    """A made-up entity: its kind, name and facts, each fact a sentence that states it and a question."""
    while True:
        kind = rng.choice(["company", "species", "festival", "invention"])
        base = _name(rng, rng.choice([2, 3]))
        name = {"company": f"{base} {rng.choice(['Labs', 'Industries', 'Robotics', 'Foods', 'Textiles'])}",
                "species": f"the {base} {rng.choice(['frog', 'beetle', 'finch', 'gecko', 'snail'])}",
                "festival": f"the {base} Festival",
                "invention": f"the {base} {rng.choice(['engine', 'loom', 'compass', 'lantern', 'pump'])}"}[kind]
        if base not in taken:  # unique by base name, so held-out entities share nothing with training ones
            taken.add(base)
            break
    town, person, year = _name(rng, 2) + rng.choice(["ville", "burg", " Falls", "port", "ford"]), _person(rng), \
        rng.randint(1820, 2021)
    N = name[0].upper() + name[1:]
    color, animal = rng.choice(_COLORS), rng.choice(_ANIMALS)
    # fact -> (sentence that states it, question, answer span, what "does not say" names when it is missing)
    if kind == "company":
        p, n = rng.choice(_PRODUCTS), rng.randint(12, 9000)
        facts = {
            "founded": (f"{N} was founded in {year}.", f"When was {name} founded?", str(year),
                        f"when {name} was founded"),
            "founder": (f"{N} was started by {person}.", f"Who started {name}?", person, f"who started {name}"),
            "city": (f"{N} is headquartered in {town}.", f"Where is {name} headquartered?", town,
                     f"where {name} is headquartered"),
            "product": (f"The best-known products of {name} are {p}.", f"What are the best-known products of {name}?",
                        p, f"what {name} is known for making"),
            "mascot": (f"The mascot of {name} is a {color} {animal}.", f"What is the mascot of {name}?",
                       f"{color} {animal}", f"what the mascot of {name} is"),
            "staff": (f"{N} employs {n} people.", f"How many people does {name} employ?", str(n),
                      f"how many people {name} employs"),
        }
    elif kind == "species":
        h, d = rng.choice(_HABITATS), rng.choice(_DIETS)
        facts = {
            "found": (f"{N} was first described in {year}.", f"When was {name} first described?", str(year),
                      f"when {name} was first described"),
            "founder": (f"{N} was discovered by {person}.", f"Who discovered {name}?", person,
                        f"who discovered {name}"),
            "city": (f"{N} lives only in the {h} near {town}.", f"Where does {name} live?", f"{h} near {town}",
                     f"where {name} lives"),
            "color": (f"Adults of {name} are bright {color}.", f"What color are adults of {name}?", color,
                      f"what color {name} is"),
            "diet": (f"{N} feeds mostly on {d}.", f"What does {name} feed on?", d, f"what {name} eats"),
        }
    elif kind == "festival":
        m, d = rng.choice(_MONTHS), rng.choice(_DISHES)
        facts = {
            "founded": (f"{N} was first held in {year}.", f"When was {name} first held?", str(year),
                        f"when {name} was first held"),
            "founder": (f"{N} was started by {person}.", f"Who started {name}?", person, f"who started {name}"),
            "city": (f"{N} takes place every {m} in {town}.", f"Where and when does {name} take place?",
                     f"every {m} in {town}", f"where or when {name} takes place"),
            "dish": (f"The traditional dish of {name} is {d}.", f"What is the traditional dish of {name}?", d,
                     f"what the traditional dish of {name} is"),
            "mascot": (f"The symbol of {name} is a {color} {animal}.", f"What is the symbol of {name}?",
                       f"{color} {animal}", f"what the symbol of {name} is"),
        }
    else:
        w = rng.randint(2, 400)
        facts = {
            "founded": (f"{N} was invented in {year}.", f"When was {name} invented?", str(year),
                        f"when {name} was invented"),
            "founder": (f"{N} was invented by {person}.", f"Who invented {name}?", person, f"who invented {name}"),
            "city": (f"The first prototype of {name} was built in {town}.",
                     f"Where was the first prototype of {name} built?", town,
                     f"where the first prototype of {name} was built"),
            "weight": (f"The original model of {name} weighed {w} kilograms.",
                       f"How much did the original model of {name} weigh?", f"{w} kilograms",
                       f"how much the original model of {name} weighed"),
            "color": (f"{N} was painted {color} to make it easy to spot.", f"What color was {name} painted?", color,
                      f"what color {name} was painted"),
        }
    return {"kind": kind, "name": name, "facts": facts}


def _document(rng: random.Random, ent: dict, keys: list[str]) -> Document:
    date = f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    site = _name(rng, 2).lower()
    url = f"https://{site}.{rng.choice(_TLDS)}/{rng.choice(_SECTIONS)}/{rng.randint(100, 99999)}"
    meta = {"date": date, "url": url}
    extra = rng.random()
    if extra < 0.35:
        meta["author"] = _person(rng)
    elif extra < 0.6:
        meta["title"] = f"{rng.choice(['Notes on', 'All about', 'A short history of', 'Meet'])} {ent['name']}"
    text = " ".join(ent["facts"][k][0] for k in keys)
    return Document(text, meta)


def _cite(meta: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in meta.items())


_ASK = ["{q}", "{q} Source?", "{q} Cite your source.", "{q} Please provide a reference.",
        "{q}\nDon't make up answers if you don't know."]


def contextual_rows(rng: random.Random, n: int, taken: set[str], *, heldout: bool = False) -> list[dict]:
    """Closed-context QA: the answer is one sentence of one document, then its source. About one in six
    questions asks for a fact no document has; the answer says so."""
    pool = [_entity(rng, taken) for _ in range(max(8, n // 2))]
    rows = []
    for i in range(n):
        ent = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
        keys = list(ent["facts"])
        answerable = rng.random() > 0.17
        shown = rng.sample(keys, k=min(len(keys), rng.randint(3, 4)))
        if answerable:
            target = rng.choice(shown)
        else:
            hidden = [k for k in keys if k not in shown]
            if not hidden:
                shown = shown[:-1]
                hidden = [k for k in keys if k not in shown]
            target = rng.choice(hidden)
        shown.sort(key=keys.index)
        doc = _document(rng, ent, shown)
        others = [e for e in pool if e is not ent]
        distractors = [_document(rng, e, rng.sample(list(e["facts"]), 3))
                       for e in rng.sample(others, rng.randint(0, 2))]
        docs = distractors[:]
        docs.insert(rng.randint(0, len(docs)), doc)
        sentence, question, span, missing = ent["facts"][target]
        prompt = build_context(docs, rng.choice(_ASK).format(q=question))
        if answerable:
            answer = f"{sentence}\nSource:\n{_cite(doc.metadata)}"
        else:
            answer = f"The provided context does not say {missing}."
        if heldout:
            rows.append({"id": f"ctx-heldout-{i + 1:02d}", "category": "contextual", "prompt": prompt,
                         "reference": answer, "answer_span": span if answerable else None,
                         "source": doc.metadata if answerable else None, "answerable": answerable,
                         "documents": [{"metadata": d.metadata, "text": d.text} for d in docs]})
        else:
            rows.append({"id": f"ctx-{i + 1:03d}", "instruction": prompt, "response": answer,
                         "category": "contextual"})
    return rows


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

CODE = [
    ("Write a Python function that returns the sum of a list of numbers.",
     "def total(numbers):\n    result = 0\n    for n in numbers:\n        result += n\n    return result"),
    ("Write a Python function that reverses a string.", "def reverse(text):\n    return text[::-1]"),
    ("Write a Python function that checks whether a number is prime.",
     "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n"
     "            return False\n        i += 1\n    return True"),
    ("Write a Python function that counts the vowels in a string.",
     "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")"),
    ("Write a Python function that returns the n-th Fibonacci number.",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("Write a Python script that reads a text file and prints the number of lines.",
     "import sys\n\nwith open(sys.argv[1], encoding=\"utf-8\") as f:\n    print(sum(1 for _ in f))"),
    ("Write a Python function that removes duplicates from a list while keeping the order.",
     "def unique(items):\n    seen = set()\n    out = []\n    for item in items:\n        if item not in seen:\n"
     "            seen.add(item)\n            out.append(item)\n    return out"),
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
    ("Write a Python function that converts Celsius to Fahrenheit.",
     "def celsius_to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32"),
]


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
    for (q, a), (q2, a2) in zip(JOKES[::2], JOKES[1::2]):
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
def build() -> dict[str, list[dict]]:
    taken: set[str] = set()
    ctx = contextual_rows(random.Random(1), 190, taken) + [BLUEBERRIES]
    heldout = contextual_rows(random.Random(2), 30, taken, heldout=True)  # `taken` keeps the names disjoint
    return {"contextual.jsonl": ctx,
            "instructions_en.jsonl": english_rows(random.Random(3)),
            "instructions_zh.jsonl": chinese_rows(random.Random(4)),
            "multiturn.jsonl": multiturn_rows(random.Random(5)),
            "chat_openai.jsonl": openai_rows(random.Random(6)),
            HELDOUT_FILE: heldout}


def write(out: Path = HERE) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in build().items():
        tmp = out / f".{name}.tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        tmp.replace(out / name)
        counts[name] = len(rows)
    return counts


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, n in write(target).items():
        print(f"{target / name}: {n} rows")
