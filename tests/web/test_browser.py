"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a real
`bansink run` in the lab's namespaces, real nftables sets, messages sent by `logger` from the
webmail host: log in, watch a ban appear, Delete and Disable, follow an address to the raw lines
that caused its ban, and a hostile user name shown as text. Each page's picture is left in
SCREENSHOTS (conftest.py)."""

import time

from lab import PORT, PROXY4, login_failed
from support import wait_until

ATTACKER, OTHER, DIRECTOR = "203.0.113.7", "203.0.113.8", "203.0.113.50"
HOSTILE = "<script>document.title='pwned';window.__pwned=1</script>"


def fail(lab, ip: str, times: int, user: str = "bob") -> None:
    """`times` failed logins of `ip`, sent by the webmail host's logger over TCP."""
    path = lab.tmp / f"fail-{ip}-{time.monotonic_ns()}.txt"
    path.write_text("".join(login_failed(ip, user=f"{user}{i}") + "\n" for i in range(times)))
    lab.sender.run("logger", "-n", PROXY4, "-P", str(PORT), "--tcp", "--rfc3164",
                   "-t", "roundcube", "-f", str(path))


def banned(lab, name: str = "ban4") -> set[str]:
    return set(lab.proxy.set_elements(name=name))


def row(b, target: str):
    return b.page.locator("table.bans tbody tr", has=b.page.locator(
        f"th.target a:text-is('{target}')"))


def test_log_in_and_see_a_ban_appear_within_2_seconds(browsing):
    b = browsing
    b.page.goto(b.url + "/bans")
    assert b.page.url == b.url + "/login?next=/bans"
    b.shot("01-login")
    b.log_in()
    b.shot("02-overview-empty")
    b.page.goto(b.url + "/bans")
    assert row(b, ATTACKER).count() == 0
    started = time.monotonic()
    fail(b.lab, ATTACKER, 3, user="mallory")
    while row(b, ATTACKER).count() == 0:
        assert time.monotonic() - started < 2.0, "the ban did not appear on the page within 2 s"
        b.page.reload()
    seen = time.monotonic() - started
    cells = row(b, ATTACKER).locator("td").all_inner_texts()
    assert cells[:3] == ["roundcube", "jail", "3"]
    assert ATTACKER in banned(b.lab)
    print(f"the ban was on the page {seen:.2f} s after the messages were sent")
    b.shot("03-blocked-addresses")
    b.page.goto(b.url + "/")
    counters = b.page.locator("table.grid tbody tr", has_text="roundcube").first
    assert counters.locator("td").all_inner_texts()[:2] == ["0", "3"]  # failed: now, total
    b.shot("04-overview")


def test_delete_unbans_at_once_in_the_kernel(browsing):
    b = browsing
    b.log_in()
    fail(b.lab, ATTACKER, 3)
    wait_until(lambda: banned(b.lab) == {ATTACKER}, 10, "the ban")
    b.page.goto(b.url + "/bans")
    row(b, ATTACKER).get_by_role("button", name="Delete").click()
    b.page.wait_for_url(b.url + "/bans")
    wait_until(lambda: banned(b.lab) == set(), 1, "the unban in the kernel within 1 s")
    assert b.page.locator(".flash.ok").inner_text() == f"Unbanned {ATTACKER} (roundcube)."
    assert row(b, ATTACKER).count() == 0
    b.shot("05-after-delete")


def test_disable_is_never_banned_again(browsing):
    b = browsing
    b.log_in()
    fail(b.lab, DIRECTOR, 3)
    wait_until(lambda: banned(b.lab) == {DIRECTOR}, 10, "the ban")
    b.page.goto(b.url + "/bans")
    disable = row(b, DIRECTOR).locator("form.allow")
    disable.locator("input[name=for]").fill("30d")
    disable.locator("input[name=note]").fill("director's hotel")
    disable.get_by_role("button", name="Disable").click()
    b.page.wait_for_url(b.url + "/bans")
    wait_until(lambda: banned(b.lab) == set(), 1, "unbanned within 1 s")
    fail(b.lab, DIRECTOR, 20)
    fail(b.lab, OTHER, 3)  # sent after: once OTHER is banned, DIRECTOR's lines were read
    wait_until(lambda: banned(b.lab) == {OTHER}, 10, "the other attacker's ban")
    assert DIRECTOR not in banned(b.lab)
    b.page.goto(b.url + "/entries")
    allowed = b.page.locator("table.grid tbody tr", has_text=DIRECTOR)
    assert "director's hotel" in allowed.inner_text()
    assert "in 29d 23h" in allowed.inner_text() or "in 30d" in allowed.inner_text()
    b.shot("06-allow-and-deny")
    b.page.goto(b.url + f"/address/{DIRECTOR}")
    assert "allow entry" in b.page.locator("section.summary").inner_text()


def test_follow_an_address_to_its_raw_lines(browsing):
    b = browsing
    b.log_in()
    fail(b.lab, ATTACKER, 3, user="mallory")
    wait_until(lambda: banned(b.lab) == {ATTACKER}, 10, "the ban")
    b.page.goto(b.url + "/bans")
    row(b, ATTACKER).locator(f"th.target a:text-is('{ATTACKER}')").click()
    b.page.wait_for_url(b.url + f"/address/{ATTACKER}")
    assert b.page.locator("h1").inner_text().startswith(f"{ATTACKER} banned")
    evidence = b.page.locator("article.ban code.raw").all_inner_texts()
    assert len(evidence) == 3
    for i, line in enumerate(evidence):
        assert line.endswith(login_failed(ATTACKER, user=f"mallory{i}"))
    assert "roundcube" in b.page.locator("article.ban h3").inner_text()
    b.shot("07-address")
    b.page.goto(b.url + "/jails")
    assert "maxretry" in b.page.locator("table.settings").first.inner_text()
    b.shot("08-jails")


def test_a_hostile_user_name_renders_as_text(browsing):
    b = browsing
    b.log_in()
    fail(b.lab, ATTACKER, 3, user=HOSTILE)
    wait_until(lambda: banned(b.lab) == {ATTACKER}, 10, "the ban")
    b.page.goto(b.url + f"/address/{ATTACKER}")
    wait_until(lambda: b.page.reload() or b.page.locator("article.ban code.raw").count() == 3,
               10, "the evidence in the store")
    texts = b.page.locator("article.ban code.raw").all_inner_texts()
    assert all(f'user="{HOSTILE}' in text for text in texts), texts
    assert b.page.evaluate("document.scripts.length") == 0
    assert b.page.evaluate("window.__pwned") is None
    assert b.page.title() != "pwned"
    b.shot("09-hostile-user-name")
