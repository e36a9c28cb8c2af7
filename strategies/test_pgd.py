"""PGD: a reference round on retained data, projected ascent on the forget nodes, recovery."""

import pytest

from fedunlearn import protocol as P
from strategies import Recovery, Targets
from strategies.pgd import ProjectedGradientAscent

RECOVERY = Recovery(train_rounds=20, recovery_rounds=4, lr=0.01, local_epochs=1)
CLASS_WISE = Targets(retain_nodes=[1, 2, 3], forget_nodes=[1, 2], request_json="{}")


def test_pgd_phases_project_only_the_ascent():
    pgd = ProjectedGradientAscent(CLASS_WISE, RECOVERY, radius=0.25, rounds=3)
    reference, ascent, recovery = pgd.phases()
    assert (reference.name, reference.rounds, reference.participants) == (
        "reference", 1, [1, 2, 3])
    assert reference.order[P.DATA] == "retain" and not reference.adaptive
    assert P.RADIUS not in reference.order and P.RADIUS not in recovery.order
    assert (ascent.rounds, ascent.participants) == (3, [1, 2])
    assert ascent.order[P.MODE] == "ascent" and ascent.order[P.DATA] == "forget"
    assert ascent.order[P.RADIUS] == 0.25
    assert recovery.rounds == 4 and recovery.adaptive


@pytest.mark.parametrize(("bad", "message"), [
    ({"radius": 0}, "unlearn.pgd.radius must be > 0"),
    ({"reference_rounds": 0}, "unlearn.pgd.reference_rounds must be >= 1"),
    ({"lr": -1}, "unlearn.pgd.lr must be > 0"),
])
def test_bad_settings_name_their_key(bad, message):
    with pytest.raises(ValueError, match=message):
        ProjectedGradientAscent(CLASS_WISE, RECOVERY, **bad)
