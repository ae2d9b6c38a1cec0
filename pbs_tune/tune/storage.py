"""Optuna's RDB storage of the studies: a storage URL checked in one line before any work, and
opened with heartbeats so that a killed worker's trial is retried, not lost."""
import os
import warnings

import optuna
import sqlalchemy.exc


def sqlite_path(url: str):
    """The database file of a sqlite:/// URL, else None."""
    return url.split("///", 1)[-1] if url.startswith("sqlite") else None


def check_storage(url: str, create_folder: bool = False) -> None:
    """Fail in one line, before any GPU work, for a storage URL that cannot work."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"--storage {url!r} is not a database URL; use sqlite:///path/studies.db or "
                         f"postgresql+psycopg://user:password@host/database") from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError(f"--storage: unknown database kind {parsed.drivername!r}; use sqlite:///... or "
                         f"postgresql+psycopg://...") from None
    except ImportError as exc:
        raise ValueError(f"--storage {parsed.drivername}: its driver is not installed ({exc.name}); "
                         f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    path = sqlite_path(url)
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if folder and not os.path.isdir(folder):
            if not create_folder:
                raise ValueError(f"--storage: folder {folder} does not exist; create it or choose another path")
            os.makedirs(folder, exist_ok=True)
        return
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 10} if parsed.get_backend_name() == "postgresql"
                               else {})
        with engine.connect() as con:
            con.execute(text("select 1"))
    except ImportError as exc:
        raise ValueError(f"--storage {parsed.drivername}: its driver is not installed ({exc.name}); "
                         f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise ValueError(f"--storage: cannot reach {parsed.render_as_string(hide_password=True)} ({first})") from None


def open_storage(url: str, heartbeat_s: int = 10):
    """RDB storage with heartbeats: a killed worker's running trial is marked failed after the
    grace period and enqueued again (Optuna's RetryHeartbeatStaleTrialCallback), so no trial is lost."""
    kwargs = {}
    if sqlite_path(url) is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                                          heartbeat_stale_trial_callback=retry, **kwargs)
