"""Hub id or local path: the one rule for every option that accepts either (a corpus, a model)."""

import os


def looks_like_path(name: str, suffixes: tuple[str, ...] = ()) -> bool:
    """Whether `name`, which names nothing on disk, was meant as a local path all the same.

    Hub ids are "name" or "owner/name". Anything else with a path's shape (or ending in one of
    the file `suffixes` the caller reads) was a mistyped path, and a hub lookup would only bury
    the typo under a network error.
    """
    return (
        name.startswith((".", "~", "/"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or name.endswith(suffixes)
    )
