"""Whisper's stock answers to non-speech, the one list of them, and the test for one."""

from __future__ import annotations

import re

#: Whisper's stock answers to non-speech (music, applause, silence), normalised by
#: :func:`_phrase_key`, by language (``None``: any language; a multilingual model may answer
#: in another language than the one asked for). Only ever dropped where the VAD heard no speech.
NON_SPEECH_PHRASES: dict[str | None, frozenset[str]] = {
    None: frozenset({"", "music", "applause", "laughter", "silence", "blank_audio", "inaudible"}),
    "en": frozenset({
        "thank you", "thank you very much", "thank you so much", "thanks", "thanks for watching",
        "thank you for watching", "thanks for watching and see you next time",
        "please subscribe", "subscribe", "like and subscribe", "bye", "bye bye", "you", "oh",
        "so", "okay", "the end", "music playing", "upbeat music", "soft music", "dramatic music",
    }),
    "de": frozenset({"vielen dank", "danke", "untertitel im auftrag des zdf", "tschüss"}),
    "fr": frozenset({"merci", "sous-titrage st' 501", "merci d'avoir regardé"}),
    "es": frozenset({"gracias", "gracias por ver", "subtítulos realizados por la comunidad de amara.org"}),
    "it": frozenset({"grazie", "grazie per la visione"}),
    "pt": frozenset({"obrigado", "obrigada"}),
    "nl": frozenset({"bedankt", "dank je wel"}),
    "ja": frozenset({"ご視聴ありがとうございました", "ありがとうございました"}),
    "zh": frozenset({"谢谢观看", "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目"}),
    "ru": frozenset({"спасибо", "продолжение следует", "спасибо за просмотр"}),
}


def _phrase_key(text: str) -> str:
    """Lower case, without brackets, music notes and end punctuation: "[Music]" -> "music"."""
    text = re.sub(r"[\[\]()*♪♫♬🎵🎶]", " ", text.lower())
    text = re.sub(r"[.!?,;:…。！？、\"]+", " ", text)
    return " ".join(text.split())


def is_non_speech_phrase(text: str, language: str | None = None) -> bool:
    """Is ``text`` one of Whisper's stock non-speech answers (for ``language``; None: any)?"""
    if language is None:  # detected per segment: any language's phrases may come back
        phrases = frozenset().union(*NON_SPEECH_PHRASES.values())
    else:
        phrases = NON_SPEECH_PHRASES[None] | NON_SPEECH_PHRASES.get(language.split("-")[0], frozenset())
    return _phrase_key(text) in phrases
