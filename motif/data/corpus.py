"""A small bilingual (Korean + English) corpus made procedurally, for the demo and the tests.

Templated sentences over word lists, drawn by a seeded RNG: deterministic, offline, a few MB at
most, with enough structure (agreement between templates and word classes, topic words that recur
within a document) for a tiny model's loss to fall well below the unigram entropy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

EN = {
    "subject": [
        "the cat",
        "my friend",
        "the teacher",
        "a small robot",
        "the farmer",
        "our team",
        "the old man",
        "a young girl",
        "the scientist",
        "the river",
        "the city",
        "my brother",
    ],
    "verb": ["sees", "finds", "builds", "likes", "carries", "paints", "follows", "remembers", "opens", "cleans"],
    "object": [
        "a red apple",
        "the green door",
        "a long letter",
        "the new bridge",
        "an old book",
        "the blue boat",
        "a warm coat",
        "the quiet garden",
        "a bright lamp",
        "the wooden table",
    ],
    "place": [
        "in the morning",
        "near the station",
        "after lunch",
        "by the sea",
        "at the market",
        "in the park",
        "under the tree",
        "before dinner",
        "on the hill",
        "during the rain",
    ],
    "adj": ["happy", "tired", "curious", "busy", "calm", "proud", "hungry", "careful"],
}
EN_TEMPLATES = [
    "{subject} {verb} {object} {place}.",
    "{place}, {subject} {verb} {object}.",
    "{subject} is {adj} because {subject2} {verb} {object}.",
    "when {subject} {verb} {object}, {subject2} feels {adj}.",
]

KO = {
    "subject": [
        "고양이는",
        "내 친구는",
        "선생님은",
        "작은 로봇은",
        "농부는",
        "우리 팀은",
        "할아버지는",
        "어린 소녀는",
        "과학자는",
        "강아지는",
        "도시는",
        "내 동생은",
    ],
    "object": [
        "빨간 사과를",
        "초록색 문을",
        "긴 편지를",
        "새 다리를",
        "오래된 책을",
        "파란 배를",
        "따뜻한 외투를",
        "조용한 정원을",
        "밝은 등을",
        "나무 탁자를",
    ],
    "verb": [
        "봅니다",
        "찾습니다",
        "만듭니다",
        "좋아합니다",
        "나릅니다",
        "그립니다",
        "따라갑니다",
        "기억합니다",
        "엽니다",
        "닦습니다",
    ],
    "place": [
        "아침에",
        "역 근처에서",
        "점심 후에",
        "바닷가에서",
        "시장에서",
        "공원에서",
        "나무 아래에서",
        "저녁 전에",
        "언덕 위에서",
        "비가 오는 동안",
    ],
    "adj": [
        "행복합니다",
        "피곤합니다",
        "궁금합니다",
        "바쁩니다",
        "차분합니다",
        "자랑스럽습니다",
        "배고픕니다",
        "조심스럽습니다",
    ],
}
KO_TEMPLATES = [
    "{subject} {place} {object} {verb}.",
    "{place} {subject} {object} {verb}.",
    "{subject} {adj}. {subject2} {object} {verb}.",
    "오늘 {subject} {object} {verb}. 그래서 {subject2} {adj}.",
]


EN_SYLLABLES = [
    "ka",
    "ri",
    "mo",
    "len",
    "tha",
    "bel",
    "son",
    "dra",
    "vi",
    "na",
    "ro",
    "gus",
    "el",
    "win",
    "ford",
    "ash",
]
KO_SURNAMES = ["김", "이", "박", "최", "정", "강", "조", "윤", "장", "임"]
KO_SYLLABLES = [
    "민",
    "서",
    "준",
    "지",
    "현",
    "우",
    "하",
    "은",
    "도",
    "윤",
    "수",
    "영",
    "태",
    "희",
    "진",
    "아",
    "성",
    "혜",
]
EN_NAMED = ["{name} was born in {year}.", "{name} counted {count} boats.", "{name} paid {count} coins for it."]
KO_NAMED = [
    "{name} 씨는 {year}년에 태어났습니다.",
    "{name} 씨는 배 {count}척을 셌습니다.",
    "{name} 씨는 동전 {count}개를 냈습니다.",
]


def _name(rng: random.Random, language: str) -> str:
    if language == "ko":
        return rng.choice(KO_SURNAMES) + "".join(rng.choices(KO_SYLLABLES, k=2))
    return "".join(rng.choices(EN_SYLLABLES, k=rng.randint(2, 3))).capitalize()


def _document(rng: random.Random, words: dict, templates: list[str], language: str) -> str:
    # A document keeps a small topic (two subjects, three objects), so later sentences are predictable;
    # names and numbers give the tokenizer enough distinct pairs to learn a full vocabulary.
    topic = {k: rng.sample(v, min(3, len(v))) for k, v in words.items()}
    name = _name(rng, language)
    named = KO_NAMED if language == "ko" else EN_NAMED
    sentences = []
    for _ in range(rng.randint(4, 9)):
        t = rng.choice(named) if rng.random() < 0.25 else rng.choice(templates)
        fill = {k: rng.choice(v) for k, v in topic.items()}
        fill.update(name=name, year=rng.randint(1900, 2030), count=rng.randint(2, 999))
        fill["subject2"] = rng.choice(topic["subject"])
        s = t.format(**fill)
        sentences.append(s[0].upper() + s[1:])
    return " ".join(sentences)


def documents(language: str, n: int, seed: int = 0) -> list[str]:
    """`n` documents in `language` ("ko" or "en")."""
    words, templates = {"en": (EN, EN_TEMPLATES), "ko": (KO, KO_TEMPLATES)}[language]
    rng = random.Random(f"{seed}-{language}")
    return [_document(rng, words, templates, language) for _ in range(n)]


def write_corpus(out_dir: str | Path, docs_per_language: int = 3000, seed: int = 0) -> dict[str, Path]:
    """Write `ko.jsonl` and `en.jsonl` (one `{"text": ...}` per line); returns language -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang in ("ko", "en"):
        path = out / f"{lang}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for text in documents(lang, docs_per_language, seed):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths[lang] = path
    return paths
