//! Tests of the parent module.
use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
}

fn refused(s: &str) -> SelectorError {
    match Selector::parse(s) {
        Ok(x) => panic!("{s:?} accepted as {x}"),
        Err(e) => e,
    }
}

/// A tiny deterministic generator, so the property tests need no dependency and
/// fail the same way every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn keys() {
    let long_prefix = format!("{}.io/x", "a".repeat(250));
    let good = [
        "role",
        "a",
        "Role_1.x-y",
        "example.com/role",
        "kubernetes.io/hostname",
        "a-b.c/Z",
        "1/2",
        long_prefix.as_str(),
    ];
    for k in good {
        assert_eq!(validate_key(k), Ok(()), "{k:?}");
    }
    assert_eq!(long_prefix.len(), 255);
    assert_eq!(validate_key(&"n".repeat(63)), Ok(()));

    assert_eq!(validate_key(""), Err(LabelError::KeyEmpty));
    let too_long_prefix = format!("{}/x", "a".repeat(254));
    for k in [
        "/x",
        "Example.com/x",
        "-a.com/x",
        "a-.com/x",
        "a..b/x",
        ".a/x",
        "a_b/x",
        too_long_prefix.as_str(),
    ] {
        assert_eq!(
            validate_key(k),
            Err(LabelError::KeyPrefix(shown(k))),
            "{k:?}"
        );
    }
    let too_long_name = "n".repeat(64);
    for k in [
        "a/",
        "a/b/c",
        "-x",
        "x-",
        "_x",
        "x.",
        "a b",
        "a=b",
        "é",
        too_long_name.as_str(),
    ] {
        assert_eq!(validate_key(k), Err(LabelError::KeyName(shown(k))), "{k:?}");
    }
}

#[test]
fn values() {
    for v in ["", "a", "db", "A.b_c-1", &"v".repeat(63)] {
        assert_eq!(validate_value(v), Ok(()), "{v:?}");
    }
    for v in ["-a", "a-", " ", "a/b", "a=b", "\0", &"v".repeat(64)] {
        assert_eq!(validate_value(v), Err(LabelError::Value(shown(v))), "{v:?}");
    }
    let e = validate_value(&"x".repeat(1000)).unwrap_err().to_string();
    assert!(e.len() < 400, "the value is echoed whole: {e}");
}

#[test]
fn label_sets() {
    let mut l = labels(&[("role", "db"), ("zone", "")]);
    assert_eq!(validate_labels(&l), Ok(()));
    l.insert("bad key".into(), "x".into());
    assert_eq!(
        validate_labels(&l),
        Err(LabelError::KeyName("bad key".into()))
    );
    l.remove("bad key");
    l.insert("k".into(), "-x".into());
    assert_eq!(validate_labels(&l), Err(LabelError::Value("-x".into())));

    let full: Labels = (0..MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    assert_eq!(validate_labels(&full), Ok(()));
    let over: Labels = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    assert_eq!(validate_labels(&over), Err(LabelError::TooMany(65)));
}

#[test]
fn label_arguments() {
    assert_eq!(parse_label_arg("role=db"), Ok(("role".into(), "db".into())));
    assert_eq!(
        parse_label_arg("example.com/tier=a-1"),
        Ok(("example.com/tier".into(), "a-1".into()))
    );
    assert_eq!(parse_label_arg("role="), Ok(("role".into(), String::new())));
    assert_eq!(
        parse_label_arg("role"),
        Err(LabelError::Argument("role".into()))
    );
    assert_eq!(
        parse_label_arg("a=b=c"),
        Err(LabelError::Argument("a=b=c".into()))
    );
    assert_eq!(parse_label_arg("=db"), Err(LabelError::KeyEmpty));
    assert_eq!(
        parse_label_arg("Role/x=db"),
        Err(LabelError::KeyPrefix("Role/x".into()))
    );
    assert_eq!(
        parse_label_arg("role=d b"),
        Err(LabelError::Value("d b".into()))
    );
    let msg = parse_label_arg("role").unwrap_err().to_string();
    assert!(msg.contains("key=value"), "{msg}");
}

#[test]
fn forms_and_what_they_match() {
    let db_a = labels(&[("role", "db"), ("zone", "a")]);
    let web_b = labels(&[("role", "web"), ("zone", "b"), ("canary", "")]);
    let bare = labels(&[("other", "x")]);
    let empty_role = labels(&[("role", "")]);
    let none = Labels::new();
    // Each selector, then whether it matches db_a, web_b, bare, empty_role, none.
    let cases: &[(&str, [bool; 5])] = &[
        ("role=db", [true, false, false, false, false]),
        ("role==db", [true, false, false, false, false]),
        (" role = db ", [true, false, false, false, false]),
        ("role!=db", [false, true, true, true, true]),
        ("role=", [false, false, false, true, false]),
        ("role!=", [true, true, true, false, true]),
        ("zone in (a,b)", [true, true, false, false, false]),
        ("zone in(b)", [false, true, false, false, false]),
        ("zone notin (a)", [false, true, true, true, true]),
        ("role in (db,)", [true, false, false, true, false]),
        ("role notin (,)", [true, true, true, false, true]),
        ("role", [true, true, false, true, false]),
        ("!role", [false, false, true, false, true]),
        ("! canary", [true, false, true, true, true]),
        ("canary", [false, true, false, false, false]),
        ("role=web,canary", [false, true, false, false, false]),
        (
            "role,zone notin (b),!canary",
            [true, false, false, true, false],
        ),
        ("role in (in,notin)", [false, false, false, false, false]),
        ("example.com/x=y", [false, false, false, false, false]),
        ("role=db,role=web", [false, false, false, false, false]),
    ];
    for (s, want) in cases {
        let x = sel(s);
        let got = [&db_a, &web_b, &bare, &empty_role, &none].map(|l| x.matches(l));
        assert_eq!(&got, want, "{s:?}");
    }
}

#[test]
fn the_parsed_shape() {
    let x = sel("zone in (b, a, b), !canary, role==db, k!=v, e=, x notin (,c)");
    let ops: Vec<(&str, &Operator)> = x
        .requirements()
        .iter()
        .map(|r| (r.key(), r.operator()))
        .collect();
    assert_eq!(
        ops,
        [
            ("zone", &Operator::In(vec!["a".into(), "b".into()])),
            ("canary", &Operator::DoesNotExist),
            ("role", &Operator::Equals("db".into())),
            ("k", &Operator::NotEquals("v".into())),
            ("e", &Operator::Equals(String::new())),
            ("x", &Operator::NotIn(vec![String::new(), "c".into()])),
        ]
    );
    assert_eq!("role".parse::<Selector>(), Ok(sel("role")));
}

#[test]
fn display_is_canonical_and_parses_back() {
    let cases = [
        (
            "role=db,zone in (a,b),!canary",
            "role=db,zone in (a,b),!canary",
        ),
        (
            "  role == db ,zone in(b,a,b) , ! canary ",
            "role=db,zone in (a,b),!canary",
        ),
        ("k!=v,k notin ( x , y )", "k!=v,k notin (x,y)"),
        ("k=,j!=", "k=,j!="),
        ("k in (a,,a,)", "k in (,a)"),
        ("k in (,)", "k in (,)"),
        ("k notin (,,)", "k notin (,)"),
        ("a.b/c", "a.b/c"),
    ];
    for (input, canonical) in cases {
        let x = sel(input);
        assert_eq!(x.to_string(), canonical, "{input:?}");
        assert_eq!(sel(canonical), x, "{input:?}");
    }
}

#[test]
fn each_error_with_its_position() {
    use SelectorErrorKind as K;
    let w = |s: &str| Found::Word(s.into());
    let sym = Found::Symbol;
    let cases: Vec<(&str, usize, SelectorErrorKind)> = vec![
        ("", 0, K::Empty),
        ("   ", 3, K::Empty),
        ("a=b,", 4, K::ExpectedRequirement(Found::End)),
        ("a=b, ", 5, K::ExpectedRequirement(Found::End)),
        ("a=b,,c", 4, K::ExpectedRequirement(sym(','))),
        (",a", 0, K::ExpectedRequirement(sym(','))),
        ("(a=b)", 0, K::ExpectedRequirement(sym('('))),
        ("=b", 0, K::ExpectedRequirement(sym('='))),
        ("!", 1, K::ExpectedKeyAfterNot(Found::End)),
        ("! =x", 2, K::ExpectedKeyAfterNot(sym('='))),
        ("in=x", 0, K::KeywordAsKey("in")),
        ("!notin", 1, K::KeywordAsKey("notin")),
        ("k > 3", 2, K::ExpectedOperator(sym('>'))),
        ("k<3", 1, K::ExpectedOperator(sym('<'))),
        ("k ~= x", 2, K::ExpectedOperator(sym('~'))),
        ("k v", 2, K::ExpectedOperator(w("v"))),
        ("k ! v", 2, K::ExpectedOperator(sym('!'))),
        (
            "k=(a)",
            2,
            K::ExpectedValue {
                operator: "=",
                found: sym('('),
            },
        ),
        (
            "k===v",
            3,
            K::ExpectedValue {
                operator: "==",
                found: sym('='),
            },
        ),
        (
            "k!==v",
            3,
            K::ExpectedValue {
                operator: "!=",
                found: sym('='),
            },
        ),
        (
            "k in a",
            5,
            K::ExpectedOpenParen {
                operator: "in",
                found: w("a"),
            },
        ),
        (
            "k notin",
            7,
            K::ExpectedOpenParen {
                operator: "notin",
                found: Found::End,
            },
        ),
        ("k in ()", 6, K::EmptyList("in")),
        ("k notin ( )", 10, K::EmptyList("notin")),
        ("k in (a", 7, K::ExpectedCloseOrComma(Found::End)),
        ("k in (a b)", 8, K::ExpectedCloseOrComma(w("b"))),
        ("k in (a,b", 9, K::ExpectedCloseOrComma(Found::End)),
        ("k in (", 6, K::ExpectedListValue(Found::End)),
        ("k in ((a))", 6, K::ExpectedListValue(sym('('))),
        ("k in (a,=)", 8, K::ExpectedListValue(sym('='))),
        ("k in (a))", 8, K::ExpectedSeparator(sym(')'))),
        ("a=b)", 3, K::ExpectedSeparator(sym(')'))),
        ("a=b c", 4, K::ExpectedSeparator(w("c"))),
        ("!a=b", 2, K::ExpectedSeparator(sym('='))),
        ("a=b;c", 3, K::ExpectedSeparator(sym(';'))),
        ("zoné=a", 3, K::NotAscii),
        ("a=b,ü", 4, K::NotAscii),
        ("a=b\0", 3, K::ControlCharacter(0)),
        ("a=b,\tc", 4, K::ControlCharacter(9)),
        ("a\n", 1, K::ControlCharacter(b'\n')),
        ("a=\x7f", 2, K::ControlCharacter(0x7f)),
        (
            "Role.io/k=v",
            0,
            K::BadKey(LabelError::KeyPrefix("Role.io/k".into())),
        ),
        ("a,-k", 2, K::BadKey(LabelError::KeyName("-k".into()))),
        ("k=-v", 2, K::BadValue(LabelError::Value("-v".into()))),
        (
            "k in (a, b/c)",
            9,
            K::BadValue(LabelError::Value("b/c".into())),
        ),
    ];
    for (s, position, kind) in cases {
        let e = refused(s);
        assert_eq!((e.position(), e.kind()), (position, &kind), "{s:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("selector: at position {position}: ")),
            "{e}"
        );
    }
}

#[test]
fn messages_say_what_was_expected() {
    assert_eq!(
        refused("k in (a b)").to_string(),
        "selector: at position 8: expected ')' or ',' after a value, found \"b\""
    );
    assert_eq!(
        refused("a=b,").to_string(),
        "selector: at position 4: expected a requirement (a label key, or '!' and a key), found the end of the selector"
    );
    assert!(refused(" ").to_string().contains("target_type cluster"));
    let long = format!("k {}", "x".repeat(500));
    let e = refused(&long).to_string();
    assert!(e.len() < 250, "the word is echoed whole: {e}");
    for s in ["k > 3", "k in a", "a\0", "é", "a=b,,c", "k=-v"] {
        assert!(refused(s).to_string().contains("expected"), "{s:?}");
    }
}

/// Exactly `total` bytes: 64 requirements `kNN=vvv…`, the values sharing what is left.
fn selector_of_len(total: usize) -> String {
    let fixed = MAX_REQUIREMENTS * 4 + (MAX_REQUIREMENTS - 1);
    let spare = total - fixed;
    (0..MAX_REQUIREMENTS)
        .map(|i| {
            let n = spare / MAX_REQUIREMENTS + usize::from(i < spare % MAX_REQUIREMENTS);
            format!("k{i:02}={}", "v".repeat(n))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn size_bounds() {
    let fits = selector_of_len(MAX_SELECTOR_BYTES);
    assert_eq!(fits.len(), MAX_SELECTOR_BYTES);
    assert_eq!(sel(&fits).requirements().len(), MAX_REQUIREMENTS);

    // Over the byte limit: refused before it is read, even when it is garbage.
    let over = format!(" {fits}");
    let e = refused(&over);
    assert_eq!(
        (e.position(), e.kind()),
        (MAX_SELECTOR_BYTES, &SelectorErrorKind::TooLong(4097))
    );
    let e = refused(&"\0".repeat(10_000));
    assert_eq!(e.kind(), &SelectorErrorKind::TooLong(10_000));

    let reqs: Vec<String> = (0..=MAX_REQUIREMENTS).map(|i| format!("k{i}")).collect();
    assert_eq!(
        sel(&reqs[..MAX_REQUIREMENTS].join(","))
            .requirements()
            .len(),
        64
    );
    let s = reqs.join(",");
    let e = refused(&s);
    let start = s.rfind(',').map(|i| i + 1);
    assert_eq!(
        (Some(e.position()), e.kind()),
        (start, &SelectorErrorKind::TooManyRequirements)
    );

    let values: Vec<String> = (0..=MAX_LIST_VALUES).map(|i| format!("v{i}")).collect();
    let x = sel(&format!("k in ({})", values[..MAX_LIST_VALUES].join(",")));
    assert!(matches!(x.requirements()[0].operator(), Operator::In(v) if v.len() == 64));
    let s = format!("k notin ({})", values.join(","));
    let e = refused(&s);
    let start = s.rfind(',').map(|i| i + 1);
    assert_eq!(
        (Some(e.position()), e.kind()),
        (start, &SelectorErrorKind::TooManyValues)
    );
    // Repeats count too: the bound is on the work, not on the distinct values.
    let e = refused(&format!("k in ({})", ["a"; 65].join(",")));
    assert_eq!(e.kind(), &SelectorErrorKind::TooManyValues);
}

#[test]
fn the_canonical_form_must_fit_too() {
    // `kNN in(…)` without the space the canonical form adds: 64 of them that
    // fill the byte limit would print 64 bytes over it.
    let per = (MAX_SELECTOR_BYTES - (MAX_REQUIREMENTS - 1)) / MAX_REQUIREMENTS;
    let value_len = per - "k00 in()".len();
    let reqs: Vec<String> = (0..MAX_REQUIREMENTS)
        .map(|i| format!("k{i:02} in({})", "v".repeat(value_len)))
        .collect();
    let s = reqs.join(",");
    assert!(s.len() <= MAX_SELECTOR_BYTES);
    let e = refused(&s);
    assert_eq!(e.kind(), &SelectorErrorKind::CanonicalTooLong);
    // The requirement that crosses the limit is the one named.
    let canonical_len = |n: usize| (per + 1) * n + (n - 1);
    let crossing = (1..=MAX_REQUIREMENTS)
        .find(|&n| canonical_len(n) > MAX_SELECTOR_BYTES)
        .unwrap();
    assert_eq!(e.position(), (per + 1) * (crossing - 1));
    // Without the last one it fits, and prints within the limit.
    let x = sel(&reqs[..crossing - 1].join(","));
    assert!(x.to_string().len() <= MAX_SELECTOR_BYTES);
}

/// Parses anything; what parses must print a canonical form that parses back to
/// it. Returns whether it parsed.
fn check_any(s: &str, probes: &[Labels]) -> bool {
    match Selector::parse(s) {
        Ok(x) => {
            let canonical = x.to_string();
            let again = Selector::parse(&canonical)
                .unwrap_or_else(|e| panic!("{s:?} printed {canonical:?}, refused: {e}"));
            assert_eq!(again, x, "{s:?}");
            assert_eq!(again.to_string(), canonical, "{s:?}");
            assert!(canonical.len() <= MAX_SELECTOR_BYTES);
            for l in probes {
                let _ = x.matches(l);
            }
            true
        }
        Err(e) => {
            assert!(
                e.position() <= s.len().max(MAX_SELECTOR_BYTES),
                "{s:?}: {e}"
            );
            assert!(e.to_string().contains("expected"), "{e}");
            false
        }
    }
}

fn probes() -> [Labels; 3] {
    [
        Labels::new(),
        labels(&[("a", "b"), ("k", ""), ("in", "in")]),
        labels(&[("role", "db"), ("x.io/k", "a"), ("Z9", "")]),
    ]
}

#[test]
fn no_input_panics() {
    let probes = probes();
    // Every string of up to two bytes, valid UTF-8 or repaired into it.
    for a in 0..=255u8 {
        check_any(&String::from_utf8_lossy(&[a]), &probes);
        for b in 0..=255u8 {
            let pair = [a, b];
            if let Ok(s) = std::str::from_utf8(&pair) {
                check_any(s, &probes);
            }
            check_any(&String::from_utf8_lossy(&pair), &probes);
        }
    }
    // Every string of up to four characters from the selector's own alphabet.
    let alphabet = [
        'a', 'k', '=', '!', '(', ')', ',', ' ', '-', '/', '.', 'i', 'n',
    ];
    let mut s = String::new();
    for n in 0..alphabet.len().pow(4) {
        s.clear();
        let mut n = n;
        for _ in 0..4 {
            s.push(alphabet[n % alphabet.len()]);
            n /= alphabet.len();
        }
        check_any(&s, &probes);
        check_any(s.trim_end_matches('a'), &probes);
    }
    // Longer strings of tokens, mostly near-valid, and raw random bytes.
    let tokens = [
        "a", "role", "db", "x.io/k", "in", "notin", "=", "==", "!=", "!", "(", ")", ",", " ", "",
        "-a", "a-", "A1", "é", "\0", "\t", ">", "~", "in (", "a,b", ")", "(a,)",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(24);
        let s: String = (0..len).map(|_| tokens[rng.below(tokens.len())]).collect();
        check_any(&s, &probes);
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        check_any(&String::from_utf8_lossy(&bytes), &probes);
    }
    // Long ones, around the byte limit.
    for _ in 0..50 {
        let len = 300 + rng.below(400);
        let s: String = (0..len).map(|_| tokens[rng.below(tokens.len())]).collect();
        check_any(&s, &probes);
    }
}

/// Selectors built from the grammar, with random spacing, some of them then
/// damaged by one edit: the round trip holds for every one that parses.
#[test]
fn generated_selectors_round_trip() {
    const KEYS: [&str; 7] = ["a", "role", "x.io/k", "Z9", "k-1.b_c", "in", "-a"];
    const VALUES: [&str; 7] = ["", "db", "a", "b-1", "in", "notin", "a/b"];
    const EDITS: [&str; 10] = ["", ",", "(", ")", "=", "!", " ", "é", "\0", "a"];
    let probes = probes();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let space = |rng: &mut XorShift| ["", " ", "  "][rng.below(3)];
    let (mut whole, mut whole_ok, mut edited_ok) = (0, 0, 0);
    for _ in 0..20_000 {
        let mut s = String::new();
        for i in 0..1 + rng.below(5) {
            if i > 0 {
                s.push(',');
            }
            s.push_str(space(&mut rng));
            let key = KEYS[rng.below(KEYS.len())];
            let value = VALUES[rng.below(VALUES.len())];
            match rng.below(7) {
                0 => s.push_str(key),
                1 => s += &format!("!{}{key}", space(&mut rng)),
                2..=4 => {
                    let op = ["=", "==", "!="][rng.below(3)];
                    s += &format!("{key}{}{op}{}{value}", space(&mut rng), space(&mut rng));
                }
                _ => {
                    let op = ["in", "notin"][rng.below(2)];
                    let list: Vec<&str> = (0..1 + rng.below(4))
                        .map(|_| VALUES[rng.below(VALUES.len())])
                        .collect();
                    let sep = format!("{},{}", space(&mut rng), space(&mut rng));
                    s += &format!("{key} {op}{}({})", space(&mut rng), list.join(&sep));
                }
            }
            s.push_str(space(&mut rng));
        }
        whole += 1;
        whole_ok += usize::from(check_any(&s, &probes));
        let at = rng.below(s.len() + 1);
        let mut edited: String = s.chars().take(at).collect();
        edited += EDITS[rng.below(EDITS.len())];
        edited.extend(s.chars().skip(at + rng.below(2)));
        edited_ok += usize::from(check_any(&edited, &probes));
    }
    // The generator must mostly write valid selectors, or the round trip above
    // was barely exercised.
    assert!(whole_ok > whole / 5, "{whole_ok} of {whole} parsed");
    assert!(edited_ok > 1000, "{edited_ok} edited ones parsed");
}
