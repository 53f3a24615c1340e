//! Property test: whatever string a remote sends as a path, the mapped local path stays strictly inside
//! the mirror root and outside the reserved directory (or the path is rejected).
use mountd::store::paths::{to_local, RESERVED_DIR};
use proptest::prelude::*;
use std::path::{Component, Path};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just(RESERVED_DIR.to_string()),
        Just("a\\..\\b".to_string()),
        "[a-zA-Z0-9._ -]{1,12}",
        "\\PC{1,8}",
        ".{0,6}",
        "x{250,260}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn mapped_paths_never_escape(segs in prop::collection::vec(segment(), 0..6), lead in prop::bool::ANY) {
        let remote = format!("{}{}", if lead { "/" } else { "" }, segs.join("/"));
        if let Ok(rel) = to_local("/", &remote) {
            let p = Path::new(&rel);
            prop_assert!(!rel.is_empty());
            prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
            prop_assert!(p.components().next() != Some(Component::Normal(RESERVED_DIR.as_ref())));
            prop_assert!(!rel.contains('\0') && !rel.contains('\\'));
            prop_assert!(rel.split('/').all(|s| !s.is_empty() && s.len() <= 255));
            // The inverse mapping gives back the remote path.
            prop_assert_eq!(mountd::store::paths::to_remote("/", &rel), remote);
        }
    }
}
