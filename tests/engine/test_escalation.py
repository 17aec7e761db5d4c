import math
import time

import pytest

from bansink.engine.escalation import (
    DEFAULT_FORMULA,
    BanRecord,
    EscalationSettings,
    SafeFormula,
    ban_count,
    ban_time,
    failure_weight,
    parse_factor,
    parse_multipliers,
)

HOUR, DAY = 3600.0, 86400.0
EXP_FORMULA = "ban.Time * math.exp(float(ban.Count+1)*banFactor)/math.exp(1*banFactor)"
"""The "more aggressive example" of fail2ban's jail.conf comments."""


def incr(**kw) -> EscalationSettings:
    return EscalationSettings(increment=True, **kw)


def never() -> float:
    raise AssertionError("random() called")


# -- growth


def test_default_formula_doubles_each_ban_from_the_second():
    s = incr()
    assert [ban_time(s, 600, n, random=never) for n in range(6)] == [
        600, 1200, 2400, 4800, 9600, 19200]


def test_default_formula_saturates_at_two_to_the_twentieth():
    s = incr()
    assert ban_time(s, 1, 20) == ban_time(s, 1, 21) == ban_time(s, 1, 10**9) == 2**20


def test_without_increment_every_ban_lasts_bantime():
    s = EscalationSettings(increment=False, maxtime=60, rndtime=100, factor=5)
    assert [ban_time(s, 600, n, random=never) for n in range(4)] == [600] * 4


def test_factor_multiplies_every_escalated_ban_but_not_the_first():
    # ban.Time * 2**Count * factor: 600 * 2 * 2 = 2400, ... (fail2ban's observer test numbers)
    s = incr(factor=2, maxtime=DAY)
    assert [ban_time(s, 600, n) for n in range(8)] == [
        600, 2400, 4800, 9600, 19200, 38400, 76800, DAY]
    # 600 * 2 * 1.33 = 1596, 600 * 4 * 1.33 = 3192
    s = incr(factor=1.33, maxtime=DAY)
    assert [int(ban_time(s, 600, n)) for n in range(1, 8)] == [
        1596, 3192, 6384, 12768, 25536, 51072, 86400]


def test_formula_result_is_never_shorter_than_bantime():
    s = incr(factor=0.25)  # 600 * 2 * 0.25 = 300 < 600
    assert ban_time(s, 600, 1) == 600
    assert ban_time(s, 600, 3) == 1200


def test_multipliers_replace_the_formula_and_the_last_one_repeats():
    s = incr(multipliers=(1, 2, 4, 8), formula="ban.Time * 1000")
    # multipliers[0] is never used: the first ban is not escalated
    assert [ban_time(s, 600, n) for n in range(7)] == [600, 1200, 2400, 4800, 4800, 4800, 4800]


def test_multipliers_from_jail_conf_in_minutes():
    s = incr(multipliers=parse_multipliers("1 5 30 60 300 720 1440 2880"))
    assert [ban_time(s, 60, n) / 60 for n in range(1, 10)] == [
        5, 30, 60, 300, 720, 1440, 2880, 2880, 2880]


def test_multipliers_are_scaled_by_factor_and_have_no_floor():
    s = incr(multipliers=(1, 3), factor=0.1)
    assert ban_time(s, 600, 1) == pytest.approx(180)  # shorter than bantime, as in fail2ban


def test_maxtime_caps_escalated_bans():
    s = incr(maxtime=12 * HOUR)
    assert [ban_time(s, 600, n) for n in range(1, 11)] == [
        1200, 2400, 4800, 9600, 19200, 38400, 43200, 43200, 43200, 43200]
    s = incr(multipliers=(1, 2, 4, 8, 16, 32, 64, 128, 256), maxtime=DAY)
    assert ban_time(s, 600, 8) == DAY


def test_rndtime_is_added_after_the_cap_to_escalated_bans_only():
    s = incr(maxtime=1000, rndtime=300)
    assert ban_time(s, 600, 0, random=never) == 600
    assert ban_time(s, 600, 1, random=lambda: 0.5) == 1000 + 150
    assert ban_time(s, 300, 1, random=lambda: 0.0) == 600


def test_rndtime_uses_random_by_default():
    s = incr(rndtime=300)
    times = {ban_time(s, 600, 1) for _ in range(20)}
    assert all(1200 <= t < 1500 for t in times) and len(times) > 1


def test_negative_ban_count_is_a_bug():
    with pytest.raises(ValueError):
        ban_time(incr(), 600, -1)


# -- the proof: the third ban, with the injected clock


def offend(s: EscalationSettings, history: list[BanRecord], jail: str, now: float,
           bantime: float) -> float:
    """Decide a ban at `now` as the daemon will: count, compute, record."""
    seconds = ban_time(s, bantime, ban_count(history, jail, now, overalljails=s.overalljails))
    history.append(BanRecord(jail, now, now + seconds))
    return seconds


@pytest.mark.parametrize(("settings", "third"), [
    # default formula: ban.Count == 2 -> bantime * 2**2 (the ratio "factor" of the issue is 2)
    (incr(), 4 * 600),
    # bantime.factor multiplies, it is not the ratio: 2**2 * 3
    (incr(factor=3), 12 * 600),
    # multipliers with ratio 3: 1 3 9 -> 3**2
    (incr(multipliers=(1, 3, 9, 27)), 9 * 600),
    # a formula whose ratio is bantime.factor: factor**2
    (incr(formula="ban.Time * banFactor**ban.Count", factor=3), 9 * 600),
    # capped at maxtime
    (incr(maxtime=2000), 2000),
    (incr(multipliers=(1, 3, 9, 27), maxtime=2000), 2000),
])
def test_third_ban_of_an_address(settings, third):
    history: list[BanRecord] = []
    now = 1_700_000_000.0
    assert offend(settings, history, "roundcube", now, 600) == 600
    now += 3 * HOUR
    second = offend(settings, history, "roundcube", now, 600)
    now += 3 * HOUR
    assert offend(settings, history, "roundcube", now, 600) == third
    assert 600 < second < third or second == third == settings.maxtime


def test_jail_conf_exp_formula_gives_fail2bans_numbers():
    factor = parse_factor("2.0 / 2.885385")
    # factor = ln 2 + d with d = 2/2.885385 - ln 2 ~ 1.22e-6, so the formula is
    # 600 * e**(n * factor) = 600 * 2**n * e**(n*d) ~ 600 * 2**n * (1 + n*d):
    # n=8: 153600 * (1 + 9.8e-6) = 153601.5; n=9: 307200 * (1 + 1.1e-5) = 307203.4;
    # n=10: 614400 * (1 + 1.22e-5) = 614407.5 (fail2ban's tests/observertestcase.py expects these)
    s = incr(formula=EXP_FORMULA, factor=factor, maxtime=30 * DAY)
    assert [int(ban_time(s, 600, n)) for n in range(1, 11)] == [
        1200, 2400, 4800, 9600, 19200, 38400, 76800, 153601, 307203, 614407]
    # factor 1: 600 * e**n = 1630.97, 4433.43, 12051.3, 32758.9, 89047.9 (capped)
    s = incr(formula=EXP_FORMULA, factor=1, maxtime=DAY)
    assert [int(ban_time(s, 600, n)) for n in range(1, 7)] == [
        1630, 4433, 12051, 32758, 86400, 86400]


def test_default_formula_text_is_fail2bans():
    assert DEFAULT_FORMULA == "ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor"
    assert [ban_time(incr(formula=DEFAULT_FORMULA), 600, n) for n in range(25)] == [
        ban_time(incr(), 600, n) for n in range(25)]
    assert ban_time(incr(formula="  "), 600, 2) == 2400  # blank: the default, as in fail2ban


# -- ban.Count from the history

T0 = 1_700_000_000.0


def ban(jail: str, start: float, length: float = 600) -> BanRecord:
    return BanRecord(jail, T0 + start, T0 + start + length)


def test_ban_count_counts_earlier_bans_of_the_same_jail():
    history = [ban("roundcube", 0), ban("dovecot", 100), ban("roundcube", 1000)]
    assert ban_count(history, "roundcube", T0 + 2000) == 2
    assert ban_count(history, "dovecot", T0 + 2000) == 1
    assert ban_count(history, "postfix", T0 + 2000) == 0
    assert ban_count([], "roundcube", T0) == 0


def test_overalljails_counts_every_jails_bans_once():
    history = [ban("roundcube", 0), ban("dovecot", 100), ban("roundcube", 1000)]
    assert ban_count(history, "postfix", T0 + 2000, overalljails=True) == 3
    # fail2ban sums each jail's stored running count (1 + 2 + 3 ...), counting early bans
    # again; here each ban counts once, in any order
    assert ban_count(reversed(history), "dovecot", T0 + 2000, overalljails=True) == 3


def test_bans_after_now_do_not_count():
    history = [ban("roundcube", 0), ban("roundcube", 5000)]
    assert ban_count(history, "roundcube", T0 + 4000) == 1
    assert ban_count(history, "roundcube", T0 + 5000) == 2


def test_the_count_is_forgotten_dbpurgeage_after_three_times_the_last_ban():
    history = [ban("roundcube", 0, 600), ban("roundcube", 1000, 1200)]
    kept_until = T0 + 1000 + 3 * 1200 + DAY
    assert ban_count(history, "roundcube", kept_until) == 2
    assert ban_count(history, "roundcube", kept_until + 1) == 0
    assert ban_count(history, "roundcube", T0 + 1000 + 3 * 1200 + 60,
                     dbpurgeage=60) == 2
    assert ban_count(history, "roundcube", T0 + 1000 + 3 * 1200 + 61, dbpurgeage=60) == 0


def test_a_ban_after_the_count_was_forgotten_starts_again():
    history = [ban("roundcube", 0), ban("roundcube", 1000), ban("roundcube", 10 * DAY)]
    assert ban_count(history, "roundcube", T0 + 10 * DAY + 1) == 1


def test_the_count_is_kept_by_the_latest_ban_of_the_jail_only():
    # fail2ban keeps one row per address and jail: a long old ban does not keep the count
    # once a shorter, later ban of the same jail is forgotten
    history = [ban("roundcube", 0, 10 * DAY), ban("roundcube", 20 * DAY, 600)]
    assert ban_count(history, "roundcube", T0 + 20 * DAY + 1800 + DAY + 1) == 0


def test_with_overalljails_any_jails_remembered_ban_keeps_the_count():
    history = [ban("dovecot", 0, 10 * DAY), ban("roundcube", 20 * DAY, 600)]
    now = T0 + 20 * DAY + 1800 + DAY + 1  # roundcube's ban forgotten, dovecot's not
    assert ban_count(history, "roundcube", now, overalljails=True) == 2
    assert ban_count(history, "roundcube", now) == 0


def test_a_ban_without_end_is_never_forgotten():
    history = [BanRecord("roundcube", T0, math.inf)]
    assert ban_count(history, "roundcube", T0 + 1000 * DAY) == 1


def test_negative_dbpurgeage_is_refused():
    with pytest.raises(ValueError, match="dbpurgeage"):
        ban_count([], "roundcube", T0, dbpurgeage=-1)


# -- failures of known offenders


def test_failure_weight_of_a_known_offender_grows_up_to_maxretry():
    s = incr()
    assert [failure_weight(s, n, 100) for n in range(6)] == [1, 2, 3, 5, 9, 17]
    assert failure_weight(s, 5, 6) == 6
    assert failure_weight(s, 10**6, 10**9) == 2**19 + 1
    assert failure_weight(EscalationSettings(), 5, 100) == 1


# -- settings


@pytest.mark.parametrize(("kw", "key"), [
    ({"factor": 0}, "bantime.factor"),
    ({"factor": -1}, "bantime.factor"),
    ({"factor": math.nan}, "bantime.factor"),
    ({"multipliers": (1, 0)}, "bantime.multipliers"),
    ({"multipliers": (1, -2)}, "bantime.multipliers"),
    ({"maxtime": 0}, "bantime.maxtime"),
    ({"maxtime": math.inf}, "bantime.maxtime"),
    ({"rndtime": -1}, "bantime.rndtime"),
    ({"formula": "ban.Time +"}, "bantime.formula"),
    ({"formula": "1/0"}, "bantime.formula"),
    ({"formula": "math.log(-ban.Count)"}, "bantime.formula"),
])
def test_bad_settings_name_the_fail2ban_key(kw, key):
    with pytest.raises(ValueError, match=rf"^{key}: "):
        incr(**kw)


def test_rndtime_zero_is_allowed():
    assert ban_time(incr(rndtime=0), 600, 1, random=never) == 1200


def test_check_bantime_refuses_a_maxtime_shorter_than_bantime():
    incr(maxtime=600).check_bantime(600)
    EscalationSettings(maxtime=60).check_bantime(600)  # not escalating: maxtime unused
    with pytest.raises(ValueError, match=r"^bantime.maxtime: 60 is shorter than bantime 600"):
        incr(maxtime=60).check_bantime(600)


def test_settings_are_frozen_values():
    s = incr(maxtime=DAY)
    assert s == incr(maxtime=DAY) and hash(s) == hash(incr(maxtime=DAY))
    with pytest.raises(AttributeError):
        s.maxtime = 1  # type: ignore[misc]


def test_parse_factor_evaluates_arithmetic_only():
    assert parse_factor("2.0 / 2.885385") == 2.0 / 2.885385
    assert parse_factor("1") == 1.0
    with pytest.raises(ValueError, match=r"^bantime.factor: "):
        parse_factor("ban.Time")
    with pytest.raises(ValueError, match=r"^bantime.factor: "):
        parse_factor("__import__('os').getpid()")
    with pytest.raises(ValueError, match=r"^bantime.factor: "):
        parse_factor("1/0")


def test_parse_multipliers():
    assert parse_multipliers("1 2  4\t8") == (1, 2, 4, 8)
    assert parse_multipliers("1 1.5") == (1, 1.5)
    assert parse_multipliers("") == ()
    with pytest.raises(ValueError, match=r"^bantime.multipliers: not a number: 'x'"):
        parse_multipliers("1 x")


# -- the safe evaluator


@pytest.mark.parametrize(("formula", "construct"), [
    ("__import__('os')", "call of '__import__'"),
    ("__import__('os').system('true')", "call of"),
    ("open('/etc/passwd')", "call of 'open'"),
    ("eval('1')", "call of 'eval'"),
    ("ban.__class__", "attribute"),
    ("ban.Time.__class__", "attribute"),
    ("ban.Time.real", "attribute"),
    ("math.sys", "attribute"),
    ("math.__dict__", "attribute"),
    ("(1).__class__.__bases__", "attribute"),
    ("math.factorial(10**6)", "call of 'math.factorial'"),
    ("lambda: 1", "lambda"),
    ("(lambda: 1)()", "call of 'lambda: 1'"),
    ("[x for x in (1, 2)]", "comprehension"),
    ("sum(x for x in (1, 2))", "call of 'sum'"),
    ("max(x for x in (1, 2))", "comprehension"),
    ("{x: 1 for x in ()}", "comprehension"),
    ("(x := 1)", "assignment expression"),
    ("ban.Time[0]", "subscript"),
    ("'a' * 10", "constant of type str"),
    ("b'a'", "constant of type bytes"),
    ("1j", "constant of type complex"),
    ("f'{ban.Time}'", "f-string"),
    ("[1, 2]", "list"),
    ("ban", "name 'ban'"),
    ("math", "name 'math'"),
    ("x", "name 'x'"),
    ("ban.Count & 1", "operator BitAnd"),
    ("~ban.Count", "operator '~'"),
    ("ban.Count in (1, 2)", "comparison In"),
    ("ban.Count is 1", "comparison Is"),
    ("max(*(1, 2))", "starred argument"),
    ("round(x=1)", "keyword argument"),
])
def test_formula_refuses_anything_but_arithmetic(formula, construct):
    with pytest.raises(ValueError, match=r"^bantime.formula: ") as e:
        SafeFormula(formula)
    assert f"{construct}" in str(e.value)
    with pytest.raises(ValueError, match=r"^bantime.formula: "):
        incr(formula=formula)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("formula", [
    "1 << 10**9",
    "ban.Time << 10**9",
    "ban.Time * (1 << (1 << 100))",
    "9**9**9",
    "2 ** 10**9",
    "10**10**10",
    "ban.Time ** 10**9",
    "10**400",
    "math.exp(10**6)",
    "math.pow(10, 400)",
    "float(10**400)",
    "round(ban.Time, -10**9)",
    "int(1e308) * int(1e308)",
])
def test_formula_refuses_huge_numbers_at_once(formula):
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^bantime.formula: "):
        incr(formula=formula)
    assert time.monotonic() - started < 1


def test_literal_too_large_is_refused():
    with pytest.raises(ValueError, match="number too large"):
        SafeFormula(str(2**1100))


def test_long_or_deeply_nested_formula_is_refused():
    with pytest.raises(ValueError, match="longer than"):
        SafeFormula("1+" * 300 + "1")
    with pytest.raises(ValueError, match="nested deeper"):
        SafeFormula("-" * 100 + "1")
    with pytest.raises(ValueError, match=r"^bantime.formula: "):
        SafeFormula("(" * 240 + "1" + ")" * 240)


def test_formula_that_overflows_only_for_later_bans_is_capped_by_maxtime():
    formula = "ban.Time * math.exp(ban.Count * 100)"  # exp(800) overflows from Count 8
    assert ban_time(incr(formula=formula, maxtime=DAY), 600, 8) == DAY
    # no maxtime: what fail2ban does on a formula error, the ban lasts bantime
    assert ban_time(incr(formula=formula), 600, 8) == 600
    shift = "ban.Time * (1 << (ban.Count * 100))"
    assert ban_time(incr(formula=shift, maxtime=DAY), 600, 11) == DAY
    power = "ban.Time * ban.Count ** 10**9"  # Count 1 is fine, Count 2 refused uncomputed
    assert ban_time(incr(formula=power, maxtime=DAY), 600, 2) == DAY


def test_formula_that_fails_for_a_later_count_gives_bantime():
    s = incr(formula="ban.Time / (ban.Count - 30)", maxtime=DAY, rndtime=60)
    assert ban_time(s, 600, 30, random=never) == 600


def test_formula_is_not_evaluated_for_a_first_ban():
    s = incr(formula="ban.Time * 100 / ban.Count")
    assert ban_time(s, 600, 0) == 600
    assert ban_time(s, 600, 2) == 30000


def test_formula_supports_comparisons_conditionals_and_math():
    f = SafeFormula(
        "min(ban.Time * 2 ** ban.Count, 3600) if ban.Count > 1 and not banFactor < 1 "
        "else abs(-ban.Time) + round(0.6) + int(1.9) + math.floor(0.5) + math.ceil(0.5)")
    assert f.evaluate(600, 1, 1) == 603
    assert f.evaluate(600, 2, 1) == 2400
    assert f.evaluate(600, 3, 1) == 3600
    assert f.evaluate(600, 3, 0.5) == 603
    g = SafeFormula("math.sqrt(ban.Time) ** 2 * math.pow(2, ban.Count) + math.log(math.e)"
                    " + math.log2(8) + math.log10(100) + math.log(8, 2)")
    assert g.evaluate(600, 1, 1) == pytest.approx(1200 + 1 + 3 + 2 + 3)
    chained = SafeFormula("1 < ban.Count <= 3 != banFactor or 5")
    assert [chained.evaluate(600, n, 1) for n in range(1, 5)] == [5, 1, 1, 5]
    assert chained.evaluate(600, 3, 3) == 5
    h = SafeFormula("ban.Time // 7 + ban.Time % 7 + (ban.Count >> 1) + (-ban.Count or 9)"
                    " + round(math.pi, 2) + max(1, 2, 3) - float(+ban.Count)")
    assert h.evaluate(600, 4, 1) == pytest.approx(85 + 5 + 2 - 4 + 3.14 + 3 - 4)
    assert h.evaluate(600, 0, 1) == pytest.approx(85 + 5 + 0 + 9 + 3.14 + 3 - 0)


def test_formula_errors_at_runtime_are_values_not_crashes():
    from bansink.engine.escalation import FormulaError, FormulaOverflow

    f = SafeFormula("ban.Time / ban.Count")
    with pytest.raises(FormulaError, match=r"^bantime.formula: "):
        f.evaluate(600, 0, 1)
    with pytest.raises(FormulaOverflow):
        SafeFormula("ban.Time * 10.0 ** ban.Count").evaluate(600, 400, 1)
    with pytest.raises(FormulaError, match="not a real number"):
        SafeFormula("(-ban.Time) ** 0.5").evaluate(600, 0, 1)
