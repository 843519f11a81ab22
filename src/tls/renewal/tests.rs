use super::*;

const T0: i64 = 1_800_000_000;

fn want() -> Want {
    Want {
        dns_names: vec!["pgd.ns.svc".into(), "pgd.ns.svc.cluster.local".into()],
        ca_seconds: 30_000,
        serving_seconds: 3_000,
    }
}

fn rewritten(o: Outcome) -> (Data, Vec<&'static str>) {
    match o {
        Outcome::Rewritten { data, reasons } => (data, reasons),
        Outcome::Unchanged => panic!("expected a rewrite"),
    }
}

fn certs(data: &Data, key: &str) -> Vec<Parsed> {
    parse_pems(&data[key])
}

#[test]
fn an_empty_secret_gets_a_ca_and_a_serving_certificate_once() {
    let (data, reasons) = rewritten(renew(&Data::new(), &want(), T0).unwrap());
    assert!(reasons.contains(&"no usable CA"), "{reasons:?}");
    let ca = certs(&data, CA_BUNDLE);
    assert_eq!(ca.len(), 1);
    let leaf = &certs(&data, CERT)[0];
    assert_eq!(leaf.issuer, ca[0].subject);
    assert_eq!(leaf.dns_names, want().dns_names.into_iter().collect());
    assert_eq!(leaf.not_after, T0 + 3_000);
    assert_eq!(leaf.not_before, T0 - BACKDATE_SECONDS);
    assert!(!data.contains_key(NEXT_CA_KEY));
    // Asking again at once changes nothing: replicas agree and write once.
    assert!(matches!(
        renew(&data, &want(), T0 + 1).unwrap(),
        Outcome::Unchanged
    ));
}

#[test]
fn the_serving_certificate_is_renewed_in_the_last_third_of_its_life_by_the_same_ca() {
    let (data, _) = rewritten(renew(&Data::new(), &want(), T0).unwrap());
    // Lifetime 3300 s (backdated 300); renewal once less than 1100 s remain.
    assert!(matches!(
        renew(&data, &want(), T0 + 1_899).unwrap(),
        Outcome::Unchanged
    ));
    let (after, reasons) = rewritten(renew(&data, &want(), T0 + 1_901).unwrap());
    assert_eq!(
        reasons,
        vec!["the serving certificate is in the last third of its life"]
    );
    assert_eq!(
        after[CA_BUNDLE], data[CA_BUNDLE],
        "the CA bundle must not move"
    );
    assert_eq!(after[CA_KEY], data[CA_KEY]);
    assert_ne!(after[CERT], data[CERT]);
    assert_ne!(after[KEY], data[KEY]);
}

#[test]
fn a_new_ca_is_trusted_first_and_signs_only_after_the_overlap() {
    let w = want();
    let (d0, _) = rewritten(renew(&Data::new(), &w, T0).unwrap());
    // CA lifetime 30300 s: the last third starts 10100 s before its end, at T0 + 19900.
    let t1 = T0 + 19_901;
    let mut d = d0.clone();
    // Keep the serving certificate fresh so only the CA matters.
    let (fresh, _) = rewritten(renew(&d, &w, T0 + 19_000).unwrap());
    d = fresh;
    let (d1, reasons) = rewritten(renew(&d, &w, t1).unwrap());
    assert!(
        reasons.contains(
            &"the CA is in the last third of its life: the next one is trusted ahead of use"
        ),
        "{reasons:?}"
    );
    assert_eq!(
        certs(&d1, CA_BUNDLE).len(),
        2,
        "old and next CA both trusted"
    );
    assert!(d1.contains_key(NEXT_CA_KEY));
    assert_eq!(d1[CA_KEY], d[CA_KEY], "the old CA still signs");
    assert_eq!(d1[CERT], d[CERT], "the serving certificate is untouched");

    // Inside the overlap nothing moves.
    assert!(matches!(
        renew(&d1, &w, t1 + 60).unwrap(),
        Outcome::Unchanged
    ));
    let t2 = t1 + PROMOTE_AFTER_SECONDS + 1;
    let (d2, reasons) = rewritten(renew(&d1, &w, t2).unwrap());
    assert!(reasons.contains(&"the next CA has been trusted long enough: it signs from now on"));
    assert_eq!(d2[CA_KEY], d1[NEXT_CA_KEY]);
    assert!(!d2.contains_key(NEXT_CA_KEY));
    let bundle = certs(&d2, CA_BUNDLE);
    assert_eq!(bundle.len(), 2, "the old CA stays trusted until it expires");
    assert_eq!(certs(&d2, CERT)[0].issuer, bundle[1].subject);

    // Once the old CA expires it leaves the bundle.
    let t3 = T0 + 30_001;
    let (d3, _) = rewritten(renew(&d2, &w, t3).unwrap());
    assert_eq!(certs(&d3, CA_BUNDLE).len(), 1);
    assert_eq!(certs(&d3, CA_BUNDLE)[0].der, bundle[1].der);
}

#[test]
fn a_serving_certificate_never_outlives_its_ca() {
    let w = Want {
        serving_seconds: 100_000,
        ..want()
    };
    let (d, _) = rewritten(renew(&Data::new(), &w, T0).unwrap());
    assert_eq!(
        certs(&d, CERT)[0].not_after,
        certs(&d, CA_BUNDLE)[0].not_after
    );
}

#[test]
fn mangled_contents_are_replaced_not_trusted() {
    let (good, _) = rewritten(renew(&Data::new(), &want(), T0).unwrap());

    let mut d = good.clone();
    d.insert(KEY.into(), b"not a key".to_vec());
    let (fixed, reasons) = rewritten(renew(&d, &want(), T0).unwrap());
    assert_eq!(reasons, vec!["no usable serving key"]);
    assert_eq!(fixed[CA_BUNDLE], good[CA_BUNDLE]);

    let (other, _) = rewritten(renew(&Data::new(), &want(), T0).unwrap());
    let mut d = good.clone();
    d.insert(KEY.into(), other[KEY].clone());
    let (_, reasons) = rewritten(renew(&d, &want(), T0).unwrap());
    assert_eq!(
        reasons,
        vec!["the serving key does not match its certificate"]
    );

    let mut d = good.clone();
    d.insert(CA_KEY.into(), other[CA_KEY].clone());
    let (fixed, reasons) = rewritten(renew(&d, &want(), T0).unwrap());
    assert!(reasons.contains(&"no usable CA"));
    assert_eq!(
        certs(&fixed, CA_BUNDLE).len(),
        2,
        "the CA that vouches for the served certificate stays trusted"
    );

    let mut d = good.clone();
    d.insert(NEXT_CA_KEY.into(), b"junk".to_vec());
    let (fixed, reasons) = rewritten(renew(&d, &want(), T0).unwrap());
    assert_eq!(reasons, vec!["dropping an unusable next CA key"]);
    assert!(!fixed.contains_key(NEXT_CA_KEY));

    let d: Data = [
        (
            CA_BUNDLE.to_string(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
        ),
        (CERT.to_string(), vec![0xff; 40]),
    ]
    .into();
    let (fixed, _) = rewritten(renew(&d, &want(), T0).unwrap());
    assert_eq!(certs(&fixed, CA_BUNDLE).len(), 1);
}

#[test]
fn other_host_names_get_a_new_certificate() {
    let (d, _) = rewritten(renew(&Data::new(), &want(), T0).unwrap());
    let w = Want {
        dns_names: vec!["renamed.ns.svc".into()],
        ..want()
    };
    let (after, reasons) = rewritten(renew(&d, &w, T0).unwrap());
    assert_eq!(reasons, vec!["the serving certificate names other hosts"]);
    assert_eq!(after[CA_BUNDLE], d[CA_BUNDLE]);
}
