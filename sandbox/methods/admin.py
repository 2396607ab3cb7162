"""`user.admin`: whether the caller administers the portal (no scope needed).

The portal answers a JSON boolean (docs `rest_help/general/user_admin.php`:
`{"result": true}`); setting a portal up (pipelines, stages, user fields) needs an
administrator, so `leadloop doctor` asks before `leadloop setup` fails halfway.
"""

from __future__ import annotations

from sandbox.methods.users import ADMIN_USER_ID, is_active
from sandbox.protocol import MethodResult
from sandbox.registry import Call, method


@method("user.admin", scope=None)
def user_admin(call: Call) -> MethodResult:
    row = call.portal.table("user").get(call.user_id)
    active = row is not None and is_active(row)
    return MethodResult(active and call.user_id == ADMIN_USER_ID)
