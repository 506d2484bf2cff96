"""Flask extensions, created unbound and initialised by the app factory."""
from flask_babel import Babel
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import JSON, MetaData, Text, cast, or_
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
babel = Babel()
login = LoginManager()


def is_transient(exc: Exception) -> bool:
    """A database error that a retry of the same transaction can cure: a deadlock (MariaDB 1213, PostgreSQL
    40P01), a serialization failure (40001), a lock wait timeout (1205), SQLite's busy database."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40P01", "40001"):
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1213, 1205):
        return True
    return "database is locked" in str(orig or exc)


def _insert(table, dialect: str):
    """The dialect's own INSERT construct (the one with ON CONFLICT / ON DUPLICATE KEY)."""
    if dialect in ("postgresql", "sqlite", "mysql", "mariadb"):
        return {"postgresql": postgresql, "sqlite": sqlite}.get(dialect, mysql).insert(table)
    raise NotImplementedError(dialect)  # pragma: no cover - the three supported databases are above


def insert_missing(connection, table, **values) -> None:
    """INSERT one row of ``table`` unless a row with its ``id`` exists, as a single statement that is safe
    against a concurrent insert of the same key. Read the row afterwards to see what it holds."""
    stmt = _insert(table, connection.dialect.name)
    if connection.dialect.name in ("postgresql", "sqlite"):
        stmt = stmt.on_conflict_do_nothing()
    else:  # Not INSERT IGNORE, which would also turn other errors (a value too long) into warnings.
        stmt = stmt.on_duplicate_key_update(id=table.c.id)
    connection.execute(stmt, values)


def upsert_statement(table, columns: tuple[str, ...], dialect: str):
    """One statement that inserts a row of ``table`` (key ``id``) with ``columns``, or updates the row with
    that key to these values, safe against a concurrent insert of the same key. Executed with a dict of the
    columns' values; the table's Python-side defaults fill in the other columns of an insert.

    On PostgreSQL and SQLite a row that already holds these values is left alone (not written, not locked;
    JSON is compared as its text); on MariaDB it is always updated, which InnoDB skips for identical
    values. Build it once per table and column set and keep it: its compiled form is cached with it."""
    given = [name for name in columns if name != "id"]
    updated = given + (["updated_at"] if "updated_at" in table.c and "updated_at" not in given else [])
    stmt = _insert(table, dialect)
    if dialect in ("postgresql", "sqlite"):
        def comparable(column):
            return cast(column, Text) if isinstance(table.c[column.key].type, JSON) else column
        differs = or_(*(comparable(table.c[name]).is_distinct_from(comparable(stmt.excluded[name]))
                        for name in given))
        # ON CONFLICT does not apply the column's onupdate: updated_at is set from the would-be row.
        return stmt.on_conflict_do_update(index_elements=[table.c.id],
                                          set_={name: stmt.excluded[name] for name in updated}, where=differs)
    return stmt.on_duplicate_key_update({name: stmt.inserted[name] for name in updated})
