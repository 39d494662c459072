"""Closed-context questions, for training rows and for the held-out suite, from two made-up worlds that share
no vocabulary: their own syllables (so no name coincides), first names, kinds of entity, facts, question wordings,
ways of asking and metadata. tests/test_data_samples.py checks that no name and few word n-grams are shared.

A question is answerable (the answer is the sentence of the document that holds it, then "Source:" and that
document's metadata lines, airoboros style) or not (the answer says the provided context does not say it, and
cites nothing). Unanswerable questions come in five kinds, so the model learns to check the context rather
than a surface pattern:
  missing    a fact about the entity that its document leaves out (a count, a name, a date, a score ...)
  related    a fact about a person or place the document names but does not describe
  opinion    a judgement or a recommendation the documents do not give
  absent     an entity no document describes
  elsewhere  a fact that another document states, but about another entity of the same kind
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from chatsmith.closed_context import Document, build_context

UNANSWERABLE_KINDS = ("missing", "related", "opinion", "absent", "elsewhere")


@dataclass
class Fact:
    sentence: str            # the document sentence that states it
    questions: list[str]     # ways to ask for it
    span: str                # the short answer inside the sentence
    missing: str             # "... does not say <missing>." when no document states it


@dataclass
class Entity:
    kind: str
    name: str
    facts: dict[str, Fact]
    related: list[tuple[str, str, str]]   # (fact key that names the person/place, question, missing)
    opinions: list[tuple[str, str]]       # (question, missing)


@dataclass
class Kind:
    """One kind of entity: how to name it, the values its sentences use, and the templates.
    facts: key -> (sentence, [questions], span, missing); templates use {n} (the name), {N} (capitalised)
    and the keys of `values`."""

    name: callable
    values: callable
    facts: dict[str, tuple[str, list[str], str, str]] | callable   # or rng -> such a dict, drawn per entity
    related: list[tuple[str, str, str]]
    opinions: list[tuple[str, str]]

    def fact_templates(self, rng: random.Random | None = None) -> dict[str, tuple[str, list[str], str, str]]:
        """The fact templates of one entity drawn with `rng`, or (rng None) every one this kind can state: the
        same for a fixed kind, a register's draw or its whole table."""
        return self.facts(rng) if callable(self.facts) else self.facts


@dataclass
class World:
    syllables: list[str]
    first_names: list[str]
    town_suffixes: list[str]
    kinds: dict[str, Kind]
    asks: list[str]                       # how a question is put: "{q}", "{q} Source?" ...
    years: tuple[int, int]                # document dates
    tlds: list[str]
    sections: list[str]
    url: str                              # "https://{site}.{tld}/{section}/{num}"
    titles: list[str]
    extra_meta: tuple[float, float]       # below [0]: an author line, below [1]: else a title line
    names: set[str] = field(default_factory=set)   # every made-up name this world produced

    def word(self, rng: random.Random, parts: int) -> str:
        w = "".join(rng.choice(self.syllables) for _ in range(parts)).capitalize()
        self.names.add(w)
        return w

    def person(self, rng: random.Random) -> str:
        return f"{rng.choice(self.first_names)} {self.word(rng, 2)}"

    def town(self, rng: random.Random) -> str:
        return self.word(rng, 2) + rng.choice(self.town_suffixes)


def make_entity(world: World, rng: random.Random, taken: set[str]) -> Entity:
    """A new entity whose base name no earlier entity (of either world: `taken` is shared) has."""
    while True:
        kind_name = rng.choice(sorted(world.kinds))
        base = world.word(rng, rng.choice([2, 2, 3]))
        if base not in taken:
            taken.add(base)
            break
    kind = world.kinds[kind_name]
    name = kind.name(rng, base)
    v = {"n": name, "N": name[0].upper() + name[1:], **kind.values(world, rng)}
    if "color" in v:
        v["a_color"] = ("an " if v["color"][0] in "aeiou" else "a ") + v["color"]
    facts = {k: Fact(s.format(**v), [q.format(**v) for q in qs], span.format(**v), miss.format(**v))
             for k, (s, qs, span, miss) in kind.fact_templates(rng).items()}
    related = [(k, q.format(**v), m.format(**v)) for k, q, m in kind.related]
    opinions = [(q.format(**v), m.format(**v)) for q, m in kind.opinions]
    return Entity(kind_name, name, facts, related, opinions)


def _document(world: World, rng: random.Random, ent: Entity, keys: list[str]) -> Document:
    lo, hi = world.years
    meta = {"date": f"{rng.randint(lo, hi)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "url": world.url.format(site=world.word(rng, 2).lower(), tld=rng.choice(world.tlds),
                                    section=rng.choice(world.sections), num=rng.randint(100, 99999))}
    extra = rng.random()
    if extra < world.extra_meta[0]:
        meta["author"] = world.person(rng)
    elif extra < world.extra_meta[1]:
        meta["title"] = rng.choice(world.titles).format(n=ent.name)
    order = [k for k in ent.facts if k in keys]
    return Document(" ".join(ent.facts[k].sentence for k in order), meta)


def _cite(meta: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in meta.items())


def _abstain(missing: str) -> str:
    return f"The provided context does not say {missing}."


@dataclass
class Question:
    prompt: str
    answer: str
    answerable: bool
    kind: str                 # "answerable" or one of UNANSWERABLE_KINDS
    subject: str              # the entity the question is about
    span: str | None
    source: dict | None
    docs: list[Document]
    ask: str = ""             # the instruction as put to the model
    missing: str = ""         # "<what>" in "The provided context does not say <what>."


def question(world: World, rng: random.Random, pool: list[Entity], ent: Entity, kind: str) -> Question:
    """One closed-context question of `kind` about `ent`, with 0-2 other documents from `pool`."""
    keys = list(ent.facts)
    others = [e for e in pool if e is not ent]
    n_other = rng.choice([0, 0, 0, 1, 1, 2])
    target_keys = rng.sample(keys, k=rng.randint(2, 3))
    span = source = None
    if kind == "answerable":
        key = rng.choice(target_keys)
    elif kind in ("missing", "elsewhere"):
        key = rng.choice([k for k in keys if k not in target_keys])
    elif kind == "related" and not ent.related:   # a register names no person or place to ask about
        kind, key = "missing", rng.choice([k for k in keys if k not in target_keys])
    elif kind == "related":
        key_named, q_rel, missing = rng.choice(ent.related)
        if key_named not in target_keys:
            target_keys[rng.randrange(len(target_keys))] = key_named
    distractors = rng.sample(others, n_other)
    if kind == "elsewhere":  # another entity of the same kind whose document does state the asked fact
        same = [e for e in others if e.kind == ent.kind]
        peer = rng.choice(same)
        distractors = [peer] + [e for e in distractors if e is not peer][: max(0, n_other - 1)]
    docs: list[tuple[Entity, Document]] = []
    for e in distractors:
        shown = rng.sample(list(e.facts), k=2)
        if kind == "elsewhere" and e is distractors[0] and key not in shown:
            shown[0] = key
        docs.append((e, _document(world, rng, e, shown)))
    target_doc = _document(world, rng, ent, target_keys)
    if kind == "absent":  # the question is about `ent`, but no document describes it
        if not docs:
            e = rng.choice(others)
            docs.append((e, _document(world, rng, e, rng.sample(list(e.facts), k=2))))
        key = rng.choice(keys)
    else:
        docs.insert(rng.randint(0, len(docs)), (ent, target_doc))
    if kind == "opinion":
        q, missing = rng.choice(ent.opinions)
    elif kind == "related":
        q = q_rel
    else:
        fact = ent.facts[key]
        q, missing = rng.choice(fact.questions), fact.missing
    ask = rng.choice(world.asks).format(q=q)
    prompt = build_context([d for _, d in docs], ask)
    if kind == "answerable":
        fact = ent.facts[key]
        answer, span, source = f"{fact.sentence}\nSource:\n{_cite(target_doc.metadata)}", fact.span, \
            target_doc.metadata
    else:
        answer = _abstain(missing)
    return Question(prompt, answer, kind == "answerable", kind, ent.name, span, source, [d for _, d in docs], ask,
                    missing)


def without_answer(q: Question) -> Question:
    """The minimal pair of an answerable question: the same question over the same documents with the sentence
    that answers it taken out, so only the presence of that sentence decides between answering and abstaining."""
    sentence = q.answer.split("\nSource:")[0]
    docs = [Document(" ".join(d.text.replace(sentence, " ").split()), d.metadata) if d.metadata is q.source else d
            for d in q.docs]
    return Question(build_context(docs, q.ask), _abstain(q.missing), False, "missing", q.subject, None, None, docs,
                    q.ask, q.missing)


def questions(world: World, rng: random.Random, taken: set[str], kinds: list[str], pool_size: int) -> list[Question]:
    """One question per entry of `kinds` (answerable or an unanswerable kind), over a pool of entities; every
    entity of the pool is the subject of a question before any is reused."""
    pool = [make_entity(world, rng, taken) for _ in range(pool_size)]
    for k in world.kinds:  # "elsewhere" needs two entities of each kind
        while sum(1 for e in pool if e.kind == k) < 2:
            e = make_entity(world, rng, taken)
            if e.kind == k:
                pool.append(e)
    order = pool[:]
    rng.shuffle(order)
    return [question(world, rng, pool, order[i] if i < len(order) else rng.choice(pool), kind)
            for i, kind in enumerate(kinds)]


def mixed_kinds(rng: random.Random, n: int, unanswerable: float, weights: dict[str, float]) -> list[str]:
    """`n` question kinds: round(n * unanswerable) unanswerable ones split by `weights`, the rest answerable,
    shuffled."""
    n_un = round(n * unanswerable)
    total = sum(weights.values())
    counts = {k: int(n_un * w / total) for k, w in weights.items()}
    for k in sorted(weights, key=lambda k: -weights[k])[: n_un - sum(counts.values())]:
        counts[k] += 1
    kinds = ["answerable"] * (n - n_un) + [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


# ---- the training world ---------------------------------------------------------------------------------
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


def _company_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1850, 2021), "person": w.person(rng), "boss": w.person(rng), "town": w.town(rng),
            "product": rng.choice(_PRODUCTS), "color": rng.choice(_COLORS), "animal": rng.choice(_ANIMALS),
            "count": rng.randint(12, 9000), "money": rng.randint(2, 900)}


def _species_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1820, 2021), "person": w.person(rng), "town": w.town(rng),
            "habitat": rng.choice(_HABITATS), "color": rng.choice(_COLORS), "diet": rng.choice(_DIETS),
            "years": rng.randint(2, 60), "count": rng.randint(40, 20000)}


def _festival_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1820, 2021), "person": w.person(rng), "town": w.town(rng),
            "month": rng.choice(_MONTHS), "dish": rng.choice(_DISHES), "color": rng.choice(_COLORS),
            "animal": rng.choice(_ANIMALS), "count": rng.randint(300, 90000), "price": rng.randint(3, 120)}


def _invention_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1820, 2021), "person": w.person(rng), "town": w.town(rng),
            "kg": rng.randint(2, 400), "color": rng.choice(_COLORS), "price": rng.randint(5, 3000),
            "count": rng.randint(3, 5000)}


def _match_values(w: World, rng: random.Random) -> dict:
    town = w.town(rng)
    a, b = rng.randint(1, 6), rng.randint(0, 5)
    a, b = max(a, b + 1), min(a, b)
    return {"date": f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2023)}",
            "winner": f"{town} {rng.choice(['Rovers', 'United', 'Athletic', 'Wanderers'])}", "town": town,
            "venue": w.town(rng), "score": f"{a}-{b}", "count": rng.randint(800, 70000),
            "person": w.person(rng), "ref": w.person(rng)}


_ROCKS = ["granite", "basalt", "limestone", "sandstone", "slate", "marble"]
_GENRES = ["folk", "jazz", "punk", "blues", "reggae", "chamber pop"]
_INSTRUMENTS = ["an accordion", "a banjo", "a cello", "a harp", "a trombone", "a marimba"]
_FRUITS = ["apples", "cherries", "quinces", "plums", "apricots", "pears"]


def _mountain_values(w: World, rng: random.Random) -> dict:
    return {"height": rng.randint(900, 8400), "year": rng.randint(1780, 2015), "person": w.person(rng),
            "town": w.town(rng), "rock": rng.choice(_ROCKS), "days": rng.randint(2, 30), "count": rng.randint(3, 90)}


def _band_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1960, 2020), "person": w.person(rng), "town": w.town(rng),
            "genre": rng.choice(_GENRES), "instrument": rng.choice(_INSTRUMENTS), "count": rng.randint(2, 14),
            "sold": rng.randint(5, 900)}


def _orchard_values(w: World, rng: random.Random) -> dict:
    return {"year": rng.randint(1800, 2010), "person": w.person(rng), "town": w.town(rng),
            "fruit": rng.choice(_FRUITS), "trees": rng.randint(40, 9000), "tons": rng.randint(2, 700),
            "color": rng.choice(_COLORS)}


# Registers: entities whose facts are drawn per entity from many relations of four shapes, several of one shape
# in the same document ("The treasurer of X is A. The gardener of X is B."). Over so many relations the model
# cannot memorise which question goes with which sentence; it has to match the asked relation against the
# sentences, and to abstain when none states it: the skill the held-out world tests with its own relations.
_ROLES = ["treasurer", "gardener", "cook", "secretary", "groundskeeper", "bookkeeper", "tutor", "chairperson",
          "auditor", "beekeeper", "blacksmith", "drummer", "nurse", "bailiff", "shepherd", "translator"]
_HOLDINGS = ["boats", "horses", "pianos", "beehives", "wells", "ovens", "wagons", "barns", "goats",
             "printing presses", "chimneys", "windmills", "fountains", "greenhouses", "bells", "kilns"]
_EVENTS = ["renamed", "rebuilt", "sold", "closed", "reopened", "flooded", "restored", "enlarged", "damaged by fire",
           "moved", "repainted", "insured"]
_PARTS = ["front door", "roof", "flag", "gate", "logo", "uniform", "carriage", "banner", "fence", "emblem"]
_SHAPES = {  # shape -> (words, sentence, questions, span, missing); {w} is the word, {x} the value's slot
    "role": (_ROLES, "The {w} of {{n}} is {{{x}}}.", ["Who is the {w} of {{n}}?", "Name the {w} of {{n}}."],
             "{{{x}}}", "who the {w} of {{n}} is"),
    "count": (_HOLDINGS, "{{N}} owns {{{x}}} {w}.", ["How many {w} does {{n}} own?"], "{{{x}}}",
              "how many {w} {{n}} owns"),
    "event": (_EVENTS, "{{N}} was {w} in {{{x}}}.", ["When was {{n}} {w}?", "In what year was {{n}} {w}?"], "{{{x}}}",
              "when {{n}} was {w}"),
    "color": (_PARTS, "The {w} of {{n}} is {{{x}}}.", ["What color is the {w} of {{n}}?"], "{{{x}}}",
              "what color the {w} of {{n}} is"),
}
_SLOT = {"role": "p", "count": "c", "event": "y", "color": "k"}


def _relation(shape: str, word: str, x: str) -> tuple[str, list[str], str, str]:
    """The fact template of one relation of the table, its value in slot `x`."""
    _, sentence, qs, span, missing = _SHAPES[shape]
    return sentence.format(w=word, x=x), [q.format(w=word) for q in qs], span.format(x=x), missing.format(w=word)


def _register_facts(rng: random.Random | None) -> dict:
    """Seven relations for one register entity, at most three of one shape, each with its own value slot
    (rng None: every relation of the table, for checks)."""
    if rng is None:
        return {f"{shape}:{w}": _relation(shape, w, "x") for shape, (words, *_) in _SHAPES.items() for w in words}
    facts, used = {}, {shape: 0 for shape in _SHAPES}
    while len(facts) < 7:
        shape = rng.choice(sorted(_SHAPES))
        word = rng.choice(_SHAPES[shape][0])
        if used[shape] == 3 or f"{shape}:{word}" in facts:
            continue
        facts[f"{shape}:{word}"] = _relation(shape, word, f"{_SLOT[shape]}{used[shape]}")
        used[shape] += 1
    return facts


def _register_values(w: World, rng: random.Random) -> dict:
    v = {}
    for i in range(3):
        v |= {f"p{i}": w.person(rng), f"c{i}": rng.randint(2, 400), f"y{i}": rng.randint(1790, 2020),
              f"k{i}": rng.choice(_COLORS)}
    return v


TRAIN_KINDS = {
    "company": Kind(
        name=lambda rng, b: f"{b} {rng.choice(['Labs', 'Industries', 'Robotics', 'Foods', 'Textiles'])}",
        values=_company_values,
        facts={
            "founded": ("{N} was founded in {year}.", ["When was {n} founded?", "In what year was {n} founded?"],
                        "{year}", "when {n} was founded"),
            "founder": ("{N} was started by {person}.", ["Who started {n}?", "Who founded {n}?"], "{person}",
                        "who started {n}"),
            "city": ("{N} is headquartered in {town}.", ["Where is {n} headquartered?", "In which town is {n} based?"],
                     "{town}", "where {n} is headquartered"),
            "product": ("The best-known products of {n} are {product}.",
                        ["What are the best-known products of {n}?", "What is {n} known for making?"], "{product}",
                        "what {n} is known for making"),
            "mascot": ("The mascot of {n} is a {color} {animal}.",
                       ["What is the mascot of {n}?", "Which animal is the mascot of {n}?"], "{color} {animal}",
                       "what the mascot of {n} is"),
            "staff": ("{N} employs {count} people.", ["How many people does {n} employ?",
                                                      "How many employees does {n} have?"],
                      "{count}", "how many people {n} employs"),
            "boss": ("The chief executive of {n} is {boss}.", ["Who runs {n}?", "Who is the CEO of {n}?"],
                     "{boss}", "who runs {n}"),
            "sales": ("Last year {n} sold goods worth {money} million dollars.",
                      ["How much did {n} sell last year?", "What were the sales of {n} last year?"],
                      "{money} million dollars", "how much {n} sold last year"),
        },
        related=[("founder", "When was {person} born?", "when {person} was born"),
                 ("founder", "What else did {person} start?", "what else {person} started"),
                 ("city", "How many people live in {town}?", "how many people live in {town}"),
                 ("boss", "Where did {boss} work before?", "where {boss} worked before")],
        opinions=[("Is {n} a good place to work?", "whether {n} is a good place to work"),
                  ("Should I buy shares in {n}?", "whether you should buy shares in {n}"),
                  ("What do customers think of {n}?", "what customers think of {n}")]),
    "species": Kind(
        name=lambda rng, b: f"the {b} {rng.choice(['frog', 'beetle', 'finch', 'gecko', 'snail'])}",
        values=_species_values,
        facts={
            "described": ("{N} was first described in {year}.",
                          ["When was {n} first described?", "In what year was {n} first described?"], "{year}",
                          "when {n} was first described"),
            "discoverer": ("{N} was discovered by {person}.", ["Who discovered {n}?", "Who first found {n}?"],
                           "{person}", "who discovered {n}"),
            "habitat": ("{N} lives only in the {habitat} near {town}.",
                        ["Where does {n} live?", "What is the habitat of {n}?"], "{habitat} near {town}",
                        "where {n} lives"),
            "color": ("Adults of {n} are bright {color}.", ["What color are adults of {n}?", "What color is {n}?"],
                      "{color}", "what color {n} is"),
            "diet": ("{N} feeds mostly on {diet}.", ["What does {n} feed on?", "What does {n} eat?"], "{diet}",
                     "what {n} eats"),
            "lifespan": ("{N} can live for up to {years} years.",
                         ["How long does {n} live?", "What is the lifespan of {n}?"], "{years} years",
                         "how long {n} lives"),
            "wild": ("Only about {count} individuals of {n} remain in the wild.",
                     ["How many individuals of {n} remain in the wild?", "How large is the wild population of {n}?"],
                     "{count}", "how many individuals of {n} remain in the wild"),
        },
        related=[("discoverer", "Where did {person} study?", "where {person} studied"),
                 ("habitat", "What is the weather like near {town}?", "what the weather near {town} is like")],
        opinions=[("Would {n} make a good pet?", "whether {n} would make a good pet"),
                  ("Is {n} dangerous to people?", "whether {n} is dangerous to people"),
                  ("Is {n} the most interesting animal in the text?", "which animal is the most interesting")]),
    "festival": Kind(
        name=lambda rng, b: f"the {b} Festival",
        values=_festival_values,
        facts={
            "first": ("{N} was first held in {year}.", ["When was {n} first held?", "When did {n} begin?"],
                      "{year}", "when {n} was first held"),
            "founder": ("{N} was started by {person}.", ["Who started {n}?", "Who created {n}?"], "{person}",
                        "who started {n}"),
            "place": ("{N} takes place every {month} in {town}.",
                      ["Where and when does {n} take place?", "When is {n} held?"], "every {month} in {town}",
                      "where or when {n} takes place"),
            "dish": ("The traditional dish of {n} is {dish}.",
                     ["What is the traditional dish of {n}?", "What food is served at {n}?"], "{dish}",
                     "what the traditional dish of {n} is"),
            "symbol": ("The symbol of {n} is {a_color} {animal}.", ["What is the symbol of {n}?"],
                       "{color} {animal}", "what the symbol of {n} is"),
            "visitors": ("About {count} visitors came to {n} last year.",
                         ["How many visitors came to {n} last year?", "How many people attend {n}?"], "{count}",
                         "how many visitors came to {n}"),
            "ticket": ("A day ticket for {n} costs {price} dollars.",
                       ["How much is a ticket for {n}?", "What does a day ticket for {n} cost?"], "{price} dollars",
                       "how much a ticket for {n} costs"),
        },
        related=[("founder", "What does {person} do for a living?", "what {person} does for a living"),
                 ("place", "How far is {town} from the sea?", "how far {town} is from the sea")],
        opinions=[("Is {n} fun for children?", "whether {n} is fun for children"),
                  ("Should I go to {n} next year?", "whether you should go to {n}"),
                  ("What did visitors think of {n}?", "what visitors thought of {n}")]),
    "invention": Kind(
        name=lambda rng, b: f"the {b} {rng.choice(['engine', 'loom', 'compass', 'lantern', 'pump'])}",
        values=_invention_values,
        facts={
            "year": ("{N} was invented in {year}.", ["When was {n} invented?", "In what year was {n} invented?"],
                     "{year}", "when {n} was invented"),
            "inventor": ("{N} was invented by {person}.", ["Who invented {n}?", "Who made {n}?"], "{person}",
                         "who invented {n}"),
            "prototype": ("The first prototype of {n} was built in {town}.",
                          ["Where was the first prototype of {n} built?"], "{town}",
                          "where the first prototype of {n} was built"),
            "weight": ("The original model of {n} weighed {kg} kilograms.",
                       ["How much did the original model of {n} weigh?", "How heavy was {n}?"], "{kg} kilograms",
                       "how much the original model of {n} weighed"),
            "color": ("{N} was painted {color} to make it easy to spot.", ["What color was {n} painted?"],
                      "{color}", "what color {n} was painted"),
            "price": ("When it first went on sale, {n} cost {price} dollars.",
                      ["How much did {n} cost when it first went on sale?", "What was the price of {n}?"],
                      "{price} dollars", "how much {n} cost"),
            "units": ("In total {count} units of {n} were made.", ["How many units of {n} were made?"], "{count}",
                      "how many units of {n} were made"),
        },
        related=[("inventor", "When did {person} die?", "when {person} died"),
                 ("prototype", "What is {town} famous for?", "what {town} is famous for")],
        opinions=[("Was {n} a success?", "whether {n} was a success"),
                  ("Should museums display {n}?", "whether museums should display {n}"),
                  ("Is {n} the most useful invention mentioned?", "which invention is the most useful")]),
    "mountain": Kind(
        name=lambda rng, b: f"Mount {b}",
        values=_mountain_values,
        facts={
            "height": ("{N} is {height} meters high.", ["How high is {n}?", "What is the height of {n}?"],
                       "{height} meters", "how high {n} is"),
            "climbed": ("{N} was first climbed in {year}.", ["When was {n} first climbed?"], "{year}",
                        "when {n} was first climbed"),
            "climber": ("The first person to reach the top of {n} was {person}.",
                        ["Who first reached the top of {n}?", "Who was the first to climb {n}?"], "{person}",
                        "who first reached the top of {n}"),
            "town": ("The usual route up {n} starts in {town}.", ["Where does the usual route up {n} start?"],
                     "{town}", "where the usual route up {n} starts"),
            "rock": ("{N} is made mostly of {rock}.", ["What rock is {n} made of?", "What is {n} made of?"],
                     "{rock}", "what rock {n} is made of"),
            "days": ("A climb of {n} takes about {days} days.", ["How long does a climb of {n} take?"],
                     "{days} days", "how long a climb of {n} takes"),
            "huts": ("There are {count} mountain huts on {n}.", ["How many mountain huts are there on {n}?"],
                     "{count}", "how many mountain huts there are on {n}"),
        },
        related=[("climber", "Where was {person} born?", "where {person} was born"),
                 ("town", "What is the population of {town}?", "what the population of {town} is")],
        opinions=[("Is {n} worth climbing?", "whether {n} is worth climbing"),
                  ("Is {n} safe for beginners?", "whether {n} is safe for beginners"),
                  ("Which mountain has the best view?", "which mountain has the best view")]),
    "band": Kind(
        name=lambda rng, b: f"the {b} {rng.choice(['Collective', 'Trio', 'Ensemble', 'Brothers'])}",
        values=_band_values,
        facts={
            "formed": ("{N} formed in {year}.", ["When did {n} form?", "In what year did {n} form?"], "{year}",
                       "when {n} formed"),
            "leader": ("{N} is led by the singer {person}.", ["Who leads {n}?", "Who is the singer of {n}?"],
                       "{person}", "who leads {n}"),
            "home": ("{N} comes from {town}.", ["Where does {n} come from?", "What town is {n} from?"], "{town}",
                     "where {n} comes from"),
            "genre": ("{N} plays {genre}.", ["What kind of music does {n} play?", "What genre does {n} play?"],
                      "{genre}", "what kind of music {n} plays"),
            "instrument": ("Every song of {n} features {instrument}.",
                           ["What instrument features in every song of {n}?"], "{instrument}",
                           "what instrument features in every song of {n}"),
            "albums": ("{N} has released {count} albums.", ["How many albums has {n} released?"], "{count}",
                       "how many albums {n} has released"),
            "sold": ("{N} has sold {sold} thousand records.", ["How many records has {n} sold?"],
                     "{sold} thousand", "how many records {n} has sold"),
        },
        related=[("leader", "How old is {person}?", "how old {person} is"),
                 ("home", "What river flows through {town}?", "what river flows through {town}")],
        opinions=[("Is {n} any good live?", "whether {n} is any good live"),
                  ("What is the best album of {n}?", "what the best album of {n} is"),
                  ("Should I buy tickets for {n}?", "whether you should buy tickets for {n}")]),
    "orchard": Kind(
        name=lambda rng, b: f"the {b} Orchard",
        values=_orchard_values,
        facts={
            "planted": ("{N} was planted in {year}.", ["When was {n} planted?"], "{year}", "when {n} was planted"),
            "owner": ("{N} belongs to {person}.", ["Who owns {n}?", "Whom does {n} belong to?"], "{person}",
                      "who owns {n}"),
            "town": ("{N} lies just outside {town}.", ["Where does {n} lie?", "Near which town is {n}?"], "{town}",
                     "where {n} lies"),
            "fruit": ("{N} grows mainly {fruit}.", ["What does {n} grow?", "Which fruit does {n} grow?"], "{fruit}",
                      "what {n} grows"),
            "trees": ("{N} has {trees} trees.", ["How many trees does {n} have?"], "{trees}",
                      "how many trees {n} has"),
            "harvest": ("Each year {n} harvests {tons} tons of fruit.",
                        ["How much fruit does {n} harvest each year?"], "{tons} tons",
                        "how much fruit {n} harvests each year"),
            "gate": ("The gate of {n} is painted {color}.", ["What color is the gate of {n}?"], "{color}",
                     "what color the gate of {n} is"),
        },
        related=[("owner", "What did {person} do before farming?", "what {person} did before farming"),
                 ("town", "Does {town} have a market?", "whether {town} has a market")],
        opinions=[("Is {n} a nice place to visit?", "whether {n} is a nice place to visit"),
                  ("Does {n} grow the tastiest fruit?", "whether {n} grows the tastiest fruit"),
                  ("Should {n} plant more trees?", "whether {n} should plant more trees")]),
    "match": Kind(
        name=lambda rng, b: f"the {b} Cup final",
        values=_match_values,
        facts={
            "date": ("{N} was played on {date}.", ["When was {n} played?", "On what date was {n} played?"],
                     "{date}", "when {n} was played"),
            "winner": ("{winner} won {n}.", ["Who won {n}?", "Which team won {n}?"], "{winner}", "who won {n}"),
            "score": ("{N} ended {score}.", ["What was the final score of {n}?", "What was the score in {n}?"],
                      "{score}", "what the final score of {n} was"),
            "venue": ("{N} was played in {venue}.", ["Where was {n} played?"], "{venue}", "where {n} was played"),
            "crowd": ("{count} fans watched {n}.", ["How many fans watched {n}?", "How big was the crowd at {n}?"],
                      "{count}", "how many fans watched {n}"),
            "scorer": ("{person} scored the winning goal in {n}.", ["Who scored the winning goal in {n}?"],
                       "{person}", "who scored the winning goal in {n}"),
            "referee": ("{N} was refereed by {ref}.", ["Who refereed {n}?"], "{ref}", "who refereed {n}"),
        },
        related=[("scorer", "How old is {person}?", "how old {person} is"),
                 ("winner", "Who coaches {winner}?", "who coaches {winner}"),
                 ("venue", "How many people live in {venue}?", "how many people live in {venue}")],
        opinions=[("Was {n} an exciting game?", "whether {n} was an exciting game"),
                  ("Who was the best player in {n}?", "who the best player in {n} was"),
                  ("Which team deserved to win {n}?", "which team deserved to win {n}")]),
    "society": Kind(
        name=lambda rng, b: f"the {b} {rng.choice(['Society', 'Guild', 'Club'])}",
        values=_register_values, facts=_register_facts, related=[],
        opinions=[("Is {n} worth joining?", "whether {n} is worth joining"),
                  ("Is {n} well run?", "whether {n} is well run")]),
    "estate": Kind(
        name=lambda rng, b: f"the {b} {rng.choice(['Estate', 'Manor', 'Farm'])}",
        values=_register_values, facts=_register_facts, related=[],
        opinions=[("Is {n} a nice place to visit?", "whether {n} is a nice place to visit"),
                  ("Should {n} be sold?", "whether {n} should be sold")]),
}


def train_world() -> World:
    return World(
        syllables=["ka", "lo", "ven", "tor", "mi", "sa", "rel", "dun", "qua", "bri", "zel", "mor", "ta", "fen",
                   "lix", "ora", "pel", "gru", "sto", "vin", "dra", "nel", "cor", "hul", "ist", "jam", "wex", "yor",
                   "plin", "tesk"],
        first_names=["Mara", "Tobin", "Elsa", "Iker", "Nadia", "Oskar", "Priya", "Rufus", "Selma", "Teodor", "Una",
                     "Viktor", "Wren", "Yusuf", "Zora", "Anouk", "Bram", "Cleo", "Dario", "Edda", "Faris", "Greta",
                     "Hiro", "Ilse"],
        town_suffixes=["ville", "burg", " Falls", "port", "ford"],
        kinds=TRAIN_KINDS,
        asks=["{q}", "{q}", "{q} Source?", "{q} Cite your source.", "{q} Please provide a reference.",
              "{q}\nDon't make up answers if you don't know.", "{q} What is your source?",
              "According to the documents: {q}", "{q} Answer from the documents only.", "{q} Include the source."],
        years=(2012, 2024), tlds=["com", "net", "org", "news", "info"],
        sections=["news", "science", "business", "culture", "blog", "articles", "reports", "local"],
        url="https://{site}.{tld}/{section}/{num}",
        titles=["Notes on {n}", "All about {n}", "A short history of {n}", "Meet {n}"], extra_meta=(0.2, 0.35))


# ---- the held-out world: other syllables, names, kinds, facts, wordings ---------------------------------
_ISLES = ["Gull", "Rook", "Cormorant", "Puffin", "Tern", "Skua"]
_RIVERS = ["Ashwater", "Coldbeck", "Greywash", "Millrace", "Stillburn", "Thornbrook"]
_COMETS = ["a faint green comet", "a double asteroid", "a ringed dwarf planet", "a fast red meteor stream"]
_RELICS = ["hymn book on goatskin", "map of the northern fjords", "ledger of salt prices", "herbal on birch bark"]


def _lighthouse_values(w: World, rng: random.Random) -> dict:
    return {"meters": rng.randint(11, 68), "keeper": w.person(rng), "isle": rng.choice(_ISLES),
            "miles": rng.randint(6, 31), "steps": rng.randint(80, 420)}


def _ferry_values(w: World, rng: random.Random) -> dict:
    return {"captain": w.person(rng), "harbour": w.town(rng), "other": w.town(rng),
            "seats": rng.randint(40, 1900), "hull": rng.randint(18, 160)}


def _observatory_values(w: World, rng: random.Random) -> dict:
    return {"mirror": rng.randint(30, 420), "altitude": rng.randint(600, 4800), "director": w.person(rng),
            "comet": rng.choice(_COMETS), "nights": rng.randint(90, 330)}


def _library_values(w: World, rng: random.Random) -> dict:
    return {"volumes": rng.randint(4000, 900000), "librarian": w.person(rng), "relic": rng.choice(_RELICS),
            "hour": rng.randint(6, 11), "rooms": rng.randint(3, 40)}


def _bridge_values(w: World, rng: random.Random) -> dict:
    return {"span": rng.randint(40, 1400), "river": rng.choice(_RIVERS), "engineer": w.person(rng),
            "toll": rng.randint(2, 15), "lanes": rng.randint(2, 8)}


HELDOUT_KINDS = {
    "lighthouse": Kind(
        name=lambda rng, b: f"{b} Light",
        values=_lighthouse_values,
        facts={
            "height": ("The tower of {n} rises {meters} meters above the rocks.", ["How tall is the tower of {n}?"],
                       "{meters} meters", "how tall the tower of {n} is"),
            "keeper": ("The last keeper of {n} was {keeper}.", ["Who kept {n} last?"], "{keeper}",
                       "who the last keeper of {n} was"),
            "isle": ("{N} stands on {isle} Isle.", ["On which isle does {n} stand?"], "{isle} Isle",
                     "which isle {n} stands on"),
            "range": ("The beam of {n} reaches ships {miles} nautical miles out.",
                      ["How far out does the beam of {n} reach?"], "{miles} nautical miles",
                      "how far the beam of {n} reaches"),
            "steps": ("A spiral stair of {steps} steps climbs to the lamp of {n}.",
                      ["How many steps climb to the lamp of {n}?"], "{steps}",
                      "how many steps climb to the lamp of {n}"),
        },
        related=[("keeper", "Which school did {keeper} attend?", "which school {keeper} attended"),
                 ("isle", "Does anyone live on {isle} Isle?", "whether anyone lives on {isle} Isle")],
        opinions=[("Is {n} worth a detour for a tourist?", "whether {n} is worth a detour"),
                  ("Would the view from {n} impress a photographer?", "whether the view from {n} is impressive")]),
    "ferry": Kind(
        name=lambda rng, b: f"the ferry {b}",
        values=_ferry_values,
        facts={
            "captain": ("{N} is commanded by Captain {captain}.", ["Who commands {n}?"], "{captain}",
                        "who commands {n}"),
            "harbour": ("The home harbour of {n} is {harbour}.", ["Which harbour is home to {n}?"], "{harbour}",
                        "which harbour is home to {n}"),
            "route": ("{N} shuttles between {harbour} and {other}.", ["Between which places does {n} shuttle?"],
                      "{other}", "which route {n} sails"),
            "seats": ("{N} has seats for {seats} passengers.", ["For how many passengers does {n} have seats?"],
                      "{seats}", "how many passengers {n} seats"),
            "hull": ("The hull of {n} measures {hull} meters from bow to stern.",
                     ["What does the hull of {n} measure from bow to stern?"], "{hull} meters",
                     "how long the hull of {n} is"),
        },
        related=[("captain", "Which academy trained {captain}?", "which academy trained {captain}"),
                 ("harbour", "Is the water deep at {harbour}?", "whether the water is deep at {harbour}")],
        opinions=[("Ought I to pick {n} over flying?", "whether to pick {n} over flying"),
                  ("Are the cabins on {n} comfortable?", "whether the cabins on {n} are comfortable")]),
    "observatory": Kind(
        name=lambda rng, b: f"the {b} Observatory",
        values=_observatory_values,
        facts={
            "mirror": ("The main telescope of {n} has a mirror {mirror} centimeters across.",
                       ["How wide is the mirror of the main telescope at {n}?"], "{mirror} centimeters",
                       "how wide the mirror of {n} is"),
            "altitude": ("{N} sits at an altitude of {altitude} meters.", ["At what altitude does {n} sit?"],
                         "{altitude} meters", "at what altitude {n} sits"),
            "director": ("{N} is directed by {director}.", ["Who directs {n}?"], "{director}", "who directs {n}"),
            "discovery": ("Astronomers at {n} spotted {comet}.", ["What did astronomers at {n} spot?"], "{comet}",
                          "what astronomers at {n} spotted"),
            "nights": ("Skies above {n} stay clear on {nights} nights a year.",
                       ["On how many nights a year are the skies above {n} clear?"], "{nights}",
                       "on how many nights the skies above {n} are clear"),
        },
        related=[("director", "Which prizes has {director} received?", "which prizes {director} has received"),
                 ("discovery", "Who named the object that astronomers at {n} spotted?", "who named that object")],
        opinions=[("Is {n} doing better science than its rivals?", "whether {n} does better science"),
                  ("Do you think stargazers should visit {n}?", "whether stargazers should visit {n}")]),
    "library": Kind(
        name=lambda rng, b: f"the {b} Library",
        values=_library_values,
        facts={
            "volumes": ("{N} holds {volumes} volumes.", ["How many volumes does {n} hold?"], "{volumes}",
                        "how many volumes {n} holds"),
            "librarian": ("The head librarian of {n} is {librarian}.", ["Who heads {n}?"], "{librarian}",
                          "who heads {n}"),
            "relic": ("The oldest item in {n} is a {relic}.", ["What is the oldest item in {n}?"], "{relic}",
                      "what the oldest item in {n} is"),
            "hours": ("{N} unlocks its doors at {hour} o'clock each morning.",
                      ["At what hour does {n} unlock its doors?"], "{hour} o'clock", "when {n} opens"),
            "rooms": ("Readers at {n} can use {rooms} reading rooms.",
                      ["How many reading rooms can readers use at {n}?"],
                      "{rooms}", "how many reading rooms {n} has"),
        },
        related=[("librarian", "What languages does {librarian} speak?", "what languages {librarian} speaks"),
                 ("relic", "Who wrote the {relic}?", "who wrote the {relic}")],
        opinions=[("Is {n} a pleasant spot for studying?", "whether {n} is pleasant for studying"),
                  ("Ought the town to enlarge {n}?", "whether the town ought to enlarge {n}")]),
    "bridge": Kind(
        name=lambda rng, b: f"the {b} Bridge",
        values=_bridge_values,
        facts={
            "span": ("The main span of {n} stretches {span} meters.", ["How far does the main span of {n} stretch?"],
                     "{span} meters", "how far the main span of {n} stretches"),
            "river": ("{N} carries traffic over the {river} River.", ["Over which river does {n} carry traffic?"],
                      "{river} River", "which river {n} crosses"),
            "engineer": ("{N} was designed by the engineer {engineer}.", ["Which engineer designed {n}?"],
                         "{engineer}", "who designed {n}"),
            "toll": ("Drivers pay a toll of {toll} coins to use {n}.", ["What toll do drivers pay to use {n}?"],
                     "{toll} coins", "what the toll on {n} is"),
            "lanes": ("{N} has {lanes} lanes for cars.", ["How many car lanes has {n} got?"], "{lanes}",
                      "how many car lanes {n} has"),
        },
        related=[("river", "How deep is the {river} River?", "how deep the {river} River is"),
                 ("engineer", "Which other bridges did {engineer} design?", "which other bridges {engineer} designed")],
        opinions=[("Is {n} beautiful at night?", "whether {n} is beautiful at night"),
                  ("Ought the city to scrap the toll on {n}?", "whether the city ought to scrap the toll")]),
}


def heldout_world() -> World:
    return World(
        syllables=["bax", "eth", "gol", "hau", "jin", "kru", "mab", "nox", "oph", "pru", "riv", "sku", "thal", "ubb",
                   "vax", "wil", "xan", "yeb", "zu", "aer", "bol", "cym", "dax", "eon"],
        first_names=["Agnar", "Beatrix", "Casimir", "Delphine", "Emeric", "Fenna", "Gustaf", "Halima", "Ignatius",
                     "Jorunn", "Leopold", "Marisol", "Nikita", "Ottilie", "Quentin", "Rosalind", "Sigrid", "Thaddeus"],
        town_suffixes=["haven", "stead", "mouth", " Wick", "by"],
        kinds=HELDOUT_KINDS,
        asks=["{q}", "Using only the passages above: {q}", "{q} Which passage says so?",
              "{q} If you don't know the answer, say so; don't make it up.", "Quick check. {q} Name the passage."],
        years=(1996, 2009), tlds=["io", "co.uk", "travel", "museum"],
        sections=["guides", "heritage", "travel", "archive", "places"],
        url="https://www.{site}.{tld}/{section}/{num}",
        titles=["Visiting {n}", "Guide to {n}", "Facts about {n}", "Inside {n}"], extra_meta=(0.3, 0.5))


def train_rows(rng: random.Random, n: int, taken: set[str], world: World | None = None, *,
               paired: float, unanswerable: float) -> list[dict]:
    """`n` airoboros training rows: a share `paired` of them in minimal pairs (an answerable question, and the
    same question over the same documents without the sentence that answers it), the rest single questions, a
    share `unanswerable` of them unanswerable (of every kind). The pairs make the presence of the answer the only
    thing that tells the two rows apart; the singles keep every kind of unanswerable question."""
    world = world or train_world()
    n_pairs = round(n * paired / 2)
    kinds = mixed_kinds(rng, n - 2 * n_pairs, unanswerable, {"missing": 3, "related": 2, "opinion": 2, "absent": 2,
                                                            "elsewhere": 2})
    qs = questions(world, rng, taken, kinds + ["answerable"] * n_pairs, pool_size=max(10, n // 2))
    singles, firsts = qs[: len(kinds)], qs[len(kinds):]
    rows = singles + [q for first in firsts for q in (first, without_answer(first))]
    order = list(range(len(rows)))
    rng.shuffle(order)
    return [{"id": f"ctx-{i + 1:03d}", "instruction": rows[j].prompt, "response": rows[j].answer,
             "category": "contextual"} for i, j in enumerate(order)]


def heldout_items(rng: random.Random, n: int, n_unanswerable: int, taken: set[str],
                  world: World | None = None) -> list[dict]:
    """The held-out suite: `n` items, `n_unanswerable` of them unanswerable (kinds as even as they divide)."""
    world = world or heldout_world()
    kinds = mixed_kinds(rng, n, n_unanswerable / n, {k: 1 for k in UNANSWERABLE_KINDS})
    out = []
    for i, q in enumerate(questions(world, rng, taken, kinds, pool_size=max(10, n // 2))):
        out.append({"id": f"ctx-heldout-{i + 1:02d}", "category": "contextual", "prompt": q.prompt,
                    "reference": q.answer, "answer_span": q.span, "source": q.source, "answerable": q.answerable,
                    "question_kind": q.kind, "subject": q.subject,
                    "documents": [{"metadata": d.metadata, "text": d.text} for d in q.docs]})
    return out
