"""Personas for threads, owned by users: a system prompt written inline, or a document of a knowledge base
the owner can read (a person's profile, for a digital twin). A document persona is read afresh at every
turn, with the owner's access checked again: a persona never outlives the right to read its document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..accounts.principal import Principal
from ..clock import Clock
from ..errors import ConflictError, InvalidRequestError, NotFoundError
from ..knowledge.service import KnowledgeService
from ..store.db import Database
from ..store.tables import ChatPersona, KbDocument, KbDocumentText, new_id

__all__ = ["MAX_PROMPT", "PersonaService", "PersonaText", "persona_public"]

MAX_NAME = 100
MAX_DESCRIPTION = 2000
MAX_PROMPT = 20_000
"""The longest inline system prompt, in characters."""
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class PersonaText:
    """What a persona puts into a prompt, and where it came from."""

    persona_id: str
    name: str
    text: str
    document_id: str | None = None


def persona_public(p: ChatPersona) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "description": p.description, "system_prompt": p.system_prompt,
            "knowledge_base": p.kb_id, "document_id": p.document_id,
            "source": "document" if p.document_id else "inline", "created_at": p.created_at,
            "updated_at": p.updated_at}


def _name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidRequestError(f"name: 1 to {MAX_NAME} characters", param="name")
    return name


def _description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidRequestError(f"description: at most {MAX_DESCRIPTION} characters", param="description")
    return text


def _prompt(text: str) -> str:
    if not text.strip():
        raise InvalidRequestError("system_prompt: must not be empty", param="system_prompt")
    if len(text) > MAX_PROMPT:
        raise InvalidRequestError(f"system_prompt: at most {MAX_PROMPT} characters", param="system_prompt")
    return text


class PersonaService:
    def __init__(self, db: Database, clock: Clock, knowledge: KnowledgeService) -> None:
        self.db = db
        self.clock = clock
        self.knowledge = knowledge

    async def _document(self, principal: Principal, kb_ref: str, document_id: str) -> tuple[str, KbDocument, str]:
        """The knowledge base's id, the document and its text, if ``principal`` may read them (else 404)."""
        kb, access = await self.knowledge.get(principal, kb_ref)  # 404 unless readable
        async with self.db.session() as s:
            row = (await s.execute(
                select(KbDocument, KbDocumentText.body)
                .join(KbDocumentText, KbDocumentText.document_id == KbDocument.id)
                .where(KbDocument.id == document_id, KbDocument.kb_id == kb.id)
            )).first()
        # Pending and rejected contributions are seen by their author and the knowledge base's admins only.
        if row is None or not (row[0].status == "approved" or access == "admin"
                               or row[0].submitted_by == principal.user_id):
            raise NotFoundError(f"document '{document_id}' not found in '{kb_ref}'", param="document_id")
        return kb.id, row[0], str(row[1])

    async def create(
        self, principal: Principal, *, name: str, description: str = "", system_prompt: str | None = None,
        knowledge_base: str | None = None, document_id: str | None = None,
    ) -> ChatPersona:
        name, description = _name(name), _description(description)
        kb_id: str | None = None
        if system_prompt is not None:
            if knowledge_base is not None or document_id is not None:
                raise InvalidRequestError("give system_prompt or knowledge_base with document_id, not both",
                                          param="system_prompt")
            system_prompt = _prompt(system_prompt)
        else:
            if knowledge_base is None or document_id is None:
                raise InvalidRequestError("give system_prompt, or knowledge_base with document_id",
                                          param="system_prompt")
            kb_id = (await self._document(principal, knowledge_base, document_id))[0]
        now = self.clock.time()
        persona = ChatPersona(id=new_id("per"), owner_id=principal.user_id, name=name, description=description,
                              system_prompt=system_prompt, kb_id=kb_id, document_id=document_id, created_at=now,
                              updated_at=now)
        async with self.db.session() as s:
            await self._free(s, principal, name, None)
            s.add(persona)
        return persona

    @staticmethod
    async def _free(s: AsyncSession, principal: Principal, name: str, other_than: str | None) -> None:
        taken = (await s.execute(select(ChatPersona.id).where(
            ChatPersona.owner_id == principal.user_id, ChatPersona.name == name))).scalar_one_or_none()
        if taken is not None and taken != other_than:
            raise ConflictError(f"you already have a persona called '{name}'", param="name")

    async def list_personas(self, principal: Principal) -> list[ChatPersona]:
        async with self.db.session() as s:
            return list((await s.execute(select(ChatPersona).where(ChatPersona.owner_id == principal.user_id)
                                         .order_by(ChatPersona.name, ChatPersona.id))).scalars().all())

    async def get(self, principal: Principal, persona_id: str) -> ChatPersona:
        async with self.db.session() as s:
            persona = await s.get(ChatPersona, persona_id)
        if persona is None or persona.owner_id != principal.user_id:
            raise NotFoundError(f"There is no persona '{persona_id}'.", param="persona_id")
        return persona

    async def update(
        self, principal: Principal, persona_id: str, *, name: str | None = None, description: str | None = None,
        system_prompt: Any = _UNSET, knowledge_base: Any = _UNSET, document_id: Any = _UNSET,
    ) -> ChatPersona:
        """Change some fields; giving ``system_prompt`` makes the persona inline, giving ``knowledge_base``
        and ``document_id`` makes it a document persona."""
        persona = await self.get(principal, persona_id)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _name(name)
        if description is not None:
            changes["description"] = _description(description)
        to_document = knowledge_base is not _UNSET or document_id is not _UNSET
        if system_prompt is not _UNSET and system_prompt is not None:
            if to_document:
                raise InvalidRequestError("give system_prompt or knowledge_base with document_id, not both",
                                          param="system_prompt")
            changes.update(system_prompt=_prompt(system_prompt), kb_id=None, document_id=None)
        elif to_document:
            kb_ref = persona.kb_id if knowledge_base is _UNSET else knowledge_base
            doc = persona.document_id if document_id is _UNSET else document_id
            if not kb_ref or not doc:
                raise InvalidRequestError("a document persona needs knowledge_base and document_id",
                                          param="document_id")
            changes.update(kb_id=(await self._document(principal, kb_ref, doc))[0], document_id=doc,
                           system_prompt=None)
        async with self.db.session() as s:
            row = await s.get(ChatPersona, persona.id)
            if row is None or row.owner_id != principal.user_id:
                raise NotFoundError(f"There is no persona '{persona_id}'.", param="persona_id")
            if "name" in changes:
                await self._free(s, principal, changes["name"], row.id)
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = self.clock.time()
            return row

    async def delete(self, principal: Principal, persona_id: str) -> None:
        async with self.db.session() as s:
            gone = await s.execute(delete(ChatPersona).where(
                ChatPersona.id == persona_id, ChatPersona.owner_id == principal.user_id))
            if gone.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"There is no persona '{persona_id}'.", param="persona_id")

    async def text(self, principal: Principal, persona: ChatPersona) -> PersonaText:
        """The persona's text for a prompt. A document persona whose document the owner can no longer read
        is a 409 naming it (the thread is fine; the persona needs changing)."""
        if persona.system_prompt is not None or not persona.kb_id or not persona.document_id:
            return PersonaText(persona.id, persona.name, persona.system_prompt or "")
        try:
            _, doc, body = await self._document(principal, persona.kb_id, persona.document_id)
        except NotFoundError:
            raise ConflictError(
                f"The persona '{persona.name}' is the document '{persona.document_id}', which you can no longer "
                "read; change the persona or the thread's persona_id.", param="persona_id", code="persona_unavailable",
            ) from None
        title = doc.title or doc.source
        text = (f"You are the person described in the profile below. Speak as them, in the first person, from "
                f"what the profile says; when it does not say, answer as they plausibly would and say you are not "
                f"sure.\n\n<persona_profile title=\"{_attr(title)}\">\n{_defuse(body)}\n</persona_profile>")
        return PersonaText(persona.id, persona.name, text, persona.document_id)


def _attr(value: str) -> str:
    return " ".join(value.split()).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")[:200]


def _defuse(text: str) -> str:
    return text.replace("</persona_profile", "&lt;/persona_profile")
