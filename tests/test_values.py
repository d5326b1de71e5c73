"""Values files are checked locally, secrets included, and no value is ever quoted."""

from tasks.config import values


def check(tmp_path, text: str, name: str = "values.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    return [str(p) for p in values.check_file(path, shown_as=path.relative_to(tmp_path))]


def test_clean_file_has_no_problems(tmp_path):
    assert check(tmp_path, "a:\n  b: 1\n") == []


def test_tab_in_indentation_is_reported_with_line_and_column(tmp_path):
    problems = check(tmp_path, "a:\n\tb: 1\nc: 2\n")
    assert problems[0].startswith("values.yaml:2:1: tab character")


def test_every_tab_is_listed_not_just_the_first(tmp_path):
    problems = check(tmp_path, "a:\n\tb: 1\nc:\n\td: 2\n")
    assert [p.split(":")[1] for p in problems if "tab" in p] == ["2", "4"]


def test_duplicate_key_is_reported_where_it_repeats(tmp_path):
    problems = check(tmp_path, "a:\n  b: 1\n  c: 2\n  b: 3\n")
    assert len(problems) == 1
    assert problems[0].startswith("values.yaml:4:3:")
    assert "'b' appears twice" in problems[0] and "line 2" in problems[0]


def test_syntax_error_names_line_and_column(tmp_path):
    problems = check(tmp_path, "a: [1, 2\nb: 3\n")
    assert problems and problems[0].startswith("values.yaml:")
    assert int(problems[0].split(":")[1]) >= 2


def test_messages_never_quote_a_secret_value(tmp_path):
    secret = "s3cr3t-token-value-canary"
    problems = check(tmp_path, f"token: {secret}\ntoken: {secret}\n\tbad: [\n")
    assert problems
    assert all(secret not in p for p in problems)


def test_encrypted_file_says_to_decrypt_first(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_bytes(b"\x00GITCRYPT\x00" + bytes(range(40)))
    [problem] = values.check_file(path)
    assert "invoke decrypt-secrets" in problem.message


def test_top_level_list_is_not_a_values_file(tmp_path):
    assert "must be a mapping" in check(tmp_path, "- a\n- b\n")[0]


def test_merge_layers_like_helm():
    merged = values.merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}, "d": None})
    assert merged == {"a": {"b": 3, "c": 2}}


def test_a_layer_the_registry_names_must_exist(tmp_path):
    [problem] = values.check_files([tmp_path / "typo.yaml"], tmp_path)
    assert str(problem) == "typo.yaml:1:1: does not exist (named in config/environments.yaml)"


def test_secret_leaves_read_as_numbers_are_masked_too():
    from tasks.core.masking import SecretMasker

    masker = SecretMasker()
    masker.register_tree({"apiToken": 12345678901234567890, "enabled": True, "port": 8080})
    assert masker.mask("token 12345678901234567890 on 8080, enabled True") == (
        "token ******** on 8080, enabled True"
    )
