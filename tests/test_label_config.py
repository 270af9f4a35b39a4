"""Label config parsing: which Labels→Text controls UIE fills, with which prompts."""

import pytest

from label_config import LabelConfigError, parse_label_config


def test_tutorial_config_with_predicted_values():
    controls = parse_label_config(
        '<View><Text name="text" value="$text"/>'
        '<Labels name="label" toName="text">'
        '<Label value="PER" predicted_values="人名, person"/><Label value="地名"/>'
        '</Labels></View>')
    assert len(controls) == 1
    c = controls[0]
    assert (c.from_name, c.to_name, c.data_key) == ("label", "text", "text")
    assert c.prompts == ["人名", "person", "地名"]
    assert c.labels_for("person") == ["PER"] and c.labels_for("地名") == ["地名"]


def test_several_controls_and_objects():
    controls = parse_label_config(
        '<View><Header value="x"/><Text name="title" value="$title"/>'
        '<Text name="body" value="$content"/><Image name="img" value="$image"/>'
        '<Labels name="t_ner" toName="title"><Label value="产品"/></Labels>'
        '<View><Labels name="b_ner" toName="body"><Label value="时间" background="red"/>'
        '<Label value="价格"/></Labels></View>'
        '<RectangleLabels name="box" toName="img"><Label value="car"/></RectangleLabels>'
        '<Choices name="c" toName="body"><Choice value="a"/></Choices></View>')
    assert [(c.from_name, c.to_name, c.data_key) for c in controls] == [
        ("t_ner", "title", "title"), ("b_ner", "body", "content")]
    assert controls[1].prompts == ["时间", "价格"]


@pytest.mark.parametrize("xml, message", [
    ("", "missing"),
    ("<View><Text", "not valid XML"),
    ('<View><Text name="text" value="$text"/><Choices name="c" toName="text"/></View>',
     "no <Labels>"),   # a Choices with <Choice> values is served (tests/test_choices.py)
    ('<View><Image name="img" value="$image"/><Labels name="l" toName="img">'
     '<Label value="a"/></Labels></View>', "no <Labels>"),
    ('<View><Text name="text" value="$text"/><Labels name="l" toName="text"/></View>', "no <Labels>"),
])
def test_configs_uie_cannot_serve(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_a_lone_surrogate_is_a_label_config_error_not_a_crash():
    config = '<View><Text name="text" value="$text"/><Labels name="l" toName="text">' \
             '<Label value="PER\ud800"/></Labels></View>'
    with pytest.raises(LabelConfigError, match="not valid Unicode: a lone surrogate at character"):
        parse_label_config(config)


def test_relations_are_read_from_the_xml_with_their_words_and_subject_labels():
    """Label Studio's relation template: <Relations> without name or toName."""
    from label_config import RelationLabel, parse_relations

    config = ('<View><Relations><Relation value="org:founded_by" predicted_values="创始人, founder"/>'
              '<Relation value="出生地" subject_labels="人名"/><Relation value="出生地"/><Relation/></Relations>'
              '<Labels name="label" toName="text"><Label value="人名"/><Label value="组织机构"/></Labels>'
              '<Text name="text" value="$text"/></View>')
    assert parse_relations(config) == (
        RelationLabel("org:founded_by", ("创始人", "founder")),
        RelationLabel("出生地", ("出生地",), ("人名",)))
    founded, born = parse_relations(config)
    assert founded.starts_from("人名") and founded.starts_from("组织机构")
    assert born.starts_from("人名") and not born.starts_from("组织机构")
    no_relations = config[:config.index("<Relations>")] + config[config.index("</Relations>") + 12:]
    assert parse_relations(no_relations) == ()
    # Label Studio's relations without labels: nothing UIE can ask
    empty = no_relations.replace("<View>", "<View><Relations/>")
    assert parse_relations(empty) == parse_relations(empty.replace("<Relations/>", "<Relations><Relation/></Relations>")) == ()
    assert parse_label_config(no_relations) == parse_label_config(config)


def test_a_subject_label_that_is_no_label_is_an_error():
    from label_config import parse_relations

    config = ('<View><Labels name="label" toName="text"><Label value="人名"/></Labels>'
              '<Text name="text" value="$text"/>'
              '<Relations><Relation value="出生地" subject_labels="人名,Person"/></Relations></View>')
    with pytest.raises(LabelConfigError, match="subject_labels 'Person', which no <Labels> on a <Text> has"):
        parse_relations(config)
