//! Reading a YAML literal block (`key: |`) as text, for the deployment-file tests that check
//! what cloud-init and Kubernetes manifests embed (a config, a unit) without a YAML parser.

/// The literal block `key: |` on the first such line after the line containing `after`,
/// de-indented.
pub fn literal_block(yaml: &str, after: &str, key: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(after))
        .unwrap_or_else(|| panic!("no line with {after:?}"));
    let header = format!("{key}: |");
    let at = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == header)
            .unwrap_or_else(|| panic!("no {header:?} after {after:?}"));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_indent = indent(lines[at]);
    let body: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .copied()
        .collect();
    let block_indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .expect("an empty block");
    let mut out: Vec<&str> = body
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                &l[block_indent..]
            }
        })
        .collect();
    while out.last() == Some(&"") {
        out.pop();
    }
    out.join("\n") + "\n"
}
