"""Every REST method the sandbox implements, one module per family."""

from sandbox.methods import (
    activity,  # noqa: F401
    admin,  # noqa: F401
    crm_item,  # noqa: F401
    crm_legacy,  # noqa: F401
    directories,  # noqa: F401
    events_api,  # noqa: F401
    feed,  # noqa: F401
    stagehistory,  # noqa: F401
    system,  # noqa: F401
    tasks,  # noqa: F401
    timeline,  # noqa: F401
    users,  # noqa: F401
)
