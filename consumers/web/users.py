"""The web inbox's users: who they are, what they may do, their password hashes (argon2)."""

from __future__ import annotations

from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from churnwatch.consumers.alerts.ledger import ROLES, User

_HASHER = PasswordHasher()
MIN_PASSWORD = 8


class UserError(ValueError):
    """A user cannot be added or changed (the message says why)."""


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")


def add_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    owner: str = "",
    team: str = "",
    language: str = "en",
) -> User:
    username = username.strip()
    if not username or len(username) > 100:
        raise UserError("a user name needs 1 to 100 characters")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if role == "rep" and not owner:
        raise UserError("a rep needs --owner: the customers topic's owner value they answer to")
    if session.get(User, username) is not None:
        raise UserError(f"user {username!r} exists already")
    _check_password(password)
    user = User(
        username=username,
        password_hash=_HASHER.hash(password),
        role=role,
        owner=owner,
        team=team,
        language=language,
        created_at=datetime.now(UTC),
    )
    session.add(user)
    return user


def set_password(session: Session, username: str, password: str) -> None:
    user = session.get(User, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    _check_password(password)
    user.password_hash = _HASHER.hash(password)


def remove_user(session: Session, username: str) -> None:
    user = session.get(User, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    session.delete(user)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user if the password is theirs, else None (the same for an unknown name)."""
    user = session.get(User, username)
    if user is None:
        _HASHER.hash(password)  # about as slow as a check: the answer's timing says nothing
        return None
    try:
        _HASHER.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return user
