"""Who a gateway key may be made for: a person or service of the directory in force (`tollhouse keys create`).

The directory in force is the latest version in the store (the API, an earlier config, another gateway),
else the one in the config file.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from tollhouse.config import DirectoryConfig, validation_problems
from tollhouse.events.store import Store


class DirectoryUnreadable(Exception):
    """The stored directory version does not validate."""


@dataclass(frozen=True, slots=True)
class KnownSubjects:
    ids: frozenset[str]  # people and services
    source: str  # where the directory came from, for messages
    how_to_add: str  # what to do to add someone there


def key_owner_directory(store: Store, configured: DirectoryConfig, config_path: str | None) -> KnownSubjects:
    """Raises StoreError (store unreadable) or DirectoryUnreadable."""
    doc = store.latest_document("directory")
    if doc is not None:
        try:
            cfg = DirectoryConfig.model_validate(doc.body)
        except ValidationError as err:
            raise DirectoryUnreadable("; ".join(validation_problems(err, "directory"))) from None
        source = f"directory version {doc.version} in the store, from {doc.source} by {doc.actor}"
        how = ("Add the person under people (or services) with PUT /api/v1/directory"
               + (f", or in the directory: section of {config_path} if that is where it is kept." if config_path
                  else "."))
    else:
        cfg = configured
        where = config_path or "the config file (none given: pass --config FILE)"
        source = f"the directory: section of {where}"
        how = f"Add the person under directory.people (or directory.services) in {where}."
    ids = frozenset([*(p.id for p in cfg.people), *(s.id for s in cfg.services)])
    return KnownSubjects(ids, source, how)
