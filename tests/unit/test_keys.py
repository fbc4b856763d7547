from __future__ import annotations

from lifecycle.keys import Keys


def test_every_key_name_is_pinned() -> None:
    k = Keys.for_prefix('lc')
    assert {
        'live': k.live,
        'deadline': k.deadline,
        'busy': k.busy,
        'turns': k.turns,
        'meta': k.meta,
        'reaping': k.reaping,
        'claims': k.claims,
        'reservations': k.reservations,
        'reservation_info': k.reservation_info,
        'slots': k.slots,
        'tenant_slots': k.tenant_slots,
        'epoch': k.epoch,
        'replicas': k.replicas,
        'inbox': k.inbox('api-1'),
        'lock': k.lock('idle'),
    } == {
        'live': '{lc}:live',
        'deadline': '{lc}:deadline',
        'busy': '{lc}:busy',
        'turns': '{lc}:turns',
        'meta': '{lc}:meta',
        'reaping': '{lc}:reaping',
        'claims': '{lc}:claims',
        'reservations': '{lc}:reservations',
        'reservation_info': '{lc}:reservation_info',
        'slots': '{lc}:slots',
        'tenant_slots': '{lc}:tenant_slots',
        'epoch': '{lc}:epoch',
        'replicas': '{lc}:replicas',
        'inbox': '{lc}:inbox:api-1',
        'lock': '{lc}:lock:idle',
    }


def test_every_key_shares_one_hash_tag() -> None:
    k = Keys.for_prefix('tenant-a')
    names = [getattr(k, name) for name in dir(Keys) if isinstance(getattr(Keys, name), property)]
    assert names
    assert all(name.startswith('{tenant-a}:') for name in names)
