from alembic import context

from vsnap.config import Settings
from vsnap.store.db import make_engine
from vsnap.store.models import Base

config = context.config
url = config.attributes.get("url") or Settings.from_env().database_url


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
