"""Flask extensions, created unbound and initialised by the app factory."""
from flask_babel import Babel
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData
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


def insert_missing(model, **values) -> bool:
    """INSERT one row unless a row with its primary key exists, in the session's transaction, as a single
    statement that is safe against a concurrent insert of the same key. True when the row now holds these
    values; False when another row was there first (read it to see what it holds)."""
    table = model.__table__
    dialect = db.session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        stmt = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(**values) \
            .on_conflict_do_nothing()
        return db.session.execute(stmt).rowcount == 1
    if dialect in ("mysql", "mariadb"):
        # A row inserted meanwhile by another transaction stays invisible to this one's snapshot (repeatable
        # read), so it is overwritten with these values rather than read back. Not INSERT IGNORE, which
        # would also turn other errors (a value too long) into warnings.
        stmt = mysql.insert(table).values(**values)
        stmt = stmt.on_duplicate_key_update({key: stmt.inserted[key] for key in values})
        db.session.execute(stmt)
        return True
    raise NotImplementedError(dialect)  # pragma: no cover - the three supported databases are above
