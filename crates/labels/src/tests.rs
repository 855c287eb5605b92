//! Upstream's test tables (`labels_test.go`, `validation_test.go` of later upstream Monogon), plus
//! the set, update and registration rules.

use super::*;

const TOO_LONG: &str = "accordingtoallknownlawsofaviationthereisnowaythatabeeshouldbeabletofly";

#[test]
fn upstream_label_keys() {
    use DomainNameError as D;
    use LabelError as L;
    let cases: &[(&str, Result<(), LabelError>)] = &[
        ("foo", Ok(())),
        ("example.com/", Err(L::Empty)),
        ("foo-bar.baz_barfoo", Ok(())),
        ("-", Err(L::InvalidFirstCharacter)),
        ("-invalid", Err(L::InvalidFirstCharacter)),
        ("invalid-", Err(L::InvalidLastCharacter)),
        ("", Err(L::Empty)),
        (TOO_LONG, Err(L::TooLong)),
        ("example.com/annotation", Ok(())),
        ("/annotation", Err(L::EmptyPrefix)),
        (
            "_internal.example.com/annotation",
            Err(L::Prefix(D::Invalid)),
        ),
        ("./annotation", Err(L::Prefix(D::Invalid))),
        ("../annotation", Err(L::Prefix(D::Invalid))),
        ("tcp:80.example.com/annotation", Err(L::Prefix(D::Invalid))),
        ("80/annotation", Err(L::Prefix(D::EndsInNumber))),
        (
            "github.com/monogon/monogon/annotation",
            Err(L::InvalidPrefix),
        ),
    ];
    for (key, want) in cases {
        assert_eq!(validate_key(key), *want, "{key:?}");
    }
}

#[test]
fn upstream_label_values() {
    use LabelError as L;
    let cases: &[(&str, Result<(), LabelError>)] = &[
        ("foo", Ok(())),
        ("foo-bar.baz_barfoo", Ok(())),
        ("-", Err(L::InvalidFirstCharacter)),
        ("-invalid", Err(L::InvalidFirstCharacter)),
        ("invalid-", Err(L::InvalidLastCharacter)),
        ("", Ok(())),
        (TOO_LONG, Err(L::TooLong)),
        ("example.com/annotation", Err(L::InvalidCharacter)),
        ("/annotation", Err(L::InvalidFirstCharacter)),
        (
            "_internal.example.com/annotation",
            Err(L::InvalidFirstCharacter),
        ),
        ("./annotation", Err(L::InvalidFirstCharacter)),
        ("../annotation", Err(L::InvalidFirstCharacter)),
        ("tcp:80.example.com/annotation", Err(L::InvalidCharacter)),
        (
            "github.com/monogon/monogon/annotation",
            Err(L::InvalidCharacter),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(validate_value(value), *want, "{value:?}");
    }
}

#[test]
fn upstream_domain_names() {
    use DomainNameError as D;
    // 24 × "123456789." is 240 characters: with "1.example.com" exactly the 253 allowed.
    let long_ok = format!("{}1.example.com", "123456789.".repeat(24));
    let long_bad = format!("{}12.example.com", "123456789.".repeat(24));
    assert_eq!((long_ok.len(), long_bad.len()), (253, 254));
    let label_63 = format!(
        "{}.example.com",
        "012345678901234567890123456789012345678901234567890123456789012"
    );
    let label_64 = format!(
        "{}.example.com",
        "0123456789012345678901234567890123456789012345678901234567890123"
    );
    let cases: &[(&str, Result<(), DomainNameError>)] = &[
        ("example.com", Ok(())),
        ("localhost", Ok(())),
        (&long_ok, Ok(())),
        (&long_bad, Err(D::TooLong)),
        ("ex_ample.com", Err(D::Invalid)),
        ("-.com", Err(D::Invalid)),
        ("example-.com", Err(D::Invalid)),
        ("-example.com", Err(D::Invalid)),
        ("1-1.com", Ok(())),
        ("xn--h-0fa.com", Ok(())),
        (".", Err(D::Invalid)),
        ("example..com", Err(D::Invalid)),
        ("example.com.", Err(D::Invalid)),
        (".example.com", Err(D::Invalid)),
        ("0.example.com", Ok(())),
        ("01.example.com", Ok(())),
        (&label_63, Ok(())),
        (&label_64, Err(D::Invalid)),
        ("1.1.1.1", Err(D::EndsInNumber)),
        ("example.123", Err(D::EndsInNumber)),
        ("0123456789", Err(D::EndsInNumber)),
        ("example.0x", Err(D::EndsInNumber)),
        ("0x0123456789abcdef", Err(D::EndsInNumber)),
        ("1.2.3.1a1", Ok(())),
    ];
    for (name, want) in cases {
        assert_eq!(validate_domain_name(name), *want, "{name:?}");
    }
}

/// Cases the two curator code paths used to disagree on, and the edges of the rules.
#[test]
fn keys_beyond_upstreams_table() {
    for ok in [
        "a",
        "A1",
        "sub.example.com/a1",
        "example.com/X_y",
        &"a".repeat(MAX_NAME_LENGTH),
        &format!("example.com/{}", "a".repeat(MAX_NAME_LENGTH)),
    ] {
        assert_eq!(validate_key(ok), Ok(()), "{ok:?}");
    }
    let bad: &[(&str, LabelError)] = &[
        // The prefix is a DNS name in lowercase only: no case folding is needed to compare.
        (
            "Example.com/x",
            LabelError::Prefix(DomainNameError::Invalid),
        ),
        ("ex ample/a", LabelError::Prefix(DomainNameError::Invalid)),
        ("example.com/a b", LabelError::InvalidCharacter),
        ("zone/é", LabelError::InvalidFirstCharacter),
        (
            "1.2.3.4/x",
            LabelError::Prefix(DomainNameError::EndsInNumber),
        ),
    ];
    for (key, want) in bad {
        assert_eq!(validate_key(key), Err(*want), "{key:?}");
    }
    assert_eq!(
        validate_key(&format!("a/{}", "b".repeat(MAX_NAME_LENGTH + 1))),
        Err(LabelError::TooLong)
    );
}

#[test]
fn sets() {
    assert_eq!(check_set([("zone", "a"), ("example.com/rack", "")]), Ok(()));
    assert_eq!(
        check_set([("zone", "a"), ("zone", "b")]),
        Err(LabelSetError::DuplicateKey("zone".into()))
    );
    assert!(matches!(
        check_set([("Example.com/x", "v")]),
        Err(LabelSetError::Key { .. })
    ));
    assert!(matches!(
        check_set([("zone", "a b")]),
        Err(LabelSetError::Value { .. })
    ));
    let keys: Vec<String> = (0..=MAX_LABELS_PER_NODE).map(|i| format!("k{i}")).collect();
    assert_eq!(
        check_set(keys.iter().map(|k| (k.as_str(), ""))),
        Err(LabelSetError::TooMany {
            count: MAX_LABELS_PER_NODE + 1
        })
    );
    assert_eq!(
        check_set(keys[..MAX_LABELS_PER_NODE].iter().map(|k| (k.as_str(), ""))),
        Ok(())
    );
}

#[test]
fn updates() {
    assert_eq!(check_update([("a", "1")], ["b"]), Ok(()));
    assert_eq!(
        check_update([("a", "1"), ("a", "2")], []),
        Err(LabelSetError::DuplicateKey("a".into()))
    );
    assert_eq!(
        check_update([("a", "1")], ["a"]),
        Err(LabelSetError::UpsertAndDelete("a".into()))
    );
    assert_eq!(
        check_update([], ["b", "b"]),
        Err(LabelSetError::DuplicateDelete("b".into()))
    );
    assert!(matches!(
        check_update([], ["-b"]),
        Err(LabelSetError::Key { .. })
    ));
    assert_eq!(check_count(MAX_LABELS_PER_NODE), Ok(()));
    assert!(check_count(MAX_LABELS_PER_NODE + 1).is_err());
}

#[test]
fn registration_keeps_what_it_can() {
    let given = [
        ("rack", "r1"),
        ("example.com/zone", ""),
        ("-bad", "x"),
        ("Bad.Prefix/x", "y"),
        ("rack", "duplicate"),
        ("ok", "bad value"),
    ];
    let f = filter_registration(given);
    assert_eq!(f.kept, vec![("rack", "r1"), ("example.com/zone", "")]);
    let reasons: Vec<(&str, bool)> = f
        .skipped
        .iter()
        .map(|(k, _, why)| (*k, matches!(why, Skip::Duplicate)))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("-bad", false),
            ("Bad.Prefix/x", false),
            ("rack", true),
            ("ok", false)
        ]
    );

    // As upstream, the limit applies to the labels as given, before invalid ones are dropped.
    let keys: Vec<String> = (0..MAX_LABELS_PER_NODE + 2)
        .map(|i| format!("k{i}"))
        .collect();
    let mut pairs: Vec<(&str, &str)> = vec![("-bad", "")];
    pairs.extend(keys.iter().map(|k| (k.as_str(), "v")));
    let f = filter_registration(pairs);
    assert_eq!(f.kept.len(), MAX_LABELS_PER_NODE - 1);
    assert_eq!(
        f.skipped
            .iter()
            .filter(|(_, _, why)| *why == Skip::BeyondLimit)
            .count(),
        3
    );
}

#[test]
fn errors_quote_long_input_in_part() {
    let huge = "k".repeat(1 << 20);
    for err in [
        check_pair(&huge, "v").unwrap_err(),
        check_pair("ok", &huge).unwrap_err(),
        check_update([("ok", "v")], [huge.as_str(), huge.as_str()]).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.len() < 2 * MAX_QUOTED_CHARS,
            "{} bytes",
            message.len()
        );
        assert!(message.contains('…'), "{message}");
    }
    // A valid key of the greatest length is quoted whole.
    let label = |c: &str| c.repeat(MAX_DOMAIN_LABEL_LENGTH);
    let longest = format!(
        "{}.{}.{}.example/{}",
        label("a"),
        label("b"),
        label("c"),
        "n".repeat(MAX_NAME_LENGTH)
    );
    let err = check_update([(longest.as_str(), "v")], [longest.as_str()]).unwrap_err();
    assert_eq!(err, LabelSetError::UpsertAndDelete(longest));
}
