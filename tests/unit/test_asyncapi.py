"""schemas/asyncapi.yaml documents exactly the topics, keys and messages the code uses."""

from pathlib import Path

import yaml

from polder.common.schemas import SchemaRegistry, schemas_folder
from polder.common.topics import TOPICS


def load_doc() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((Path(str(schemas_folder())) / "asyncapi.yaml").read_text())


def test_every_code_topic_is_documented_with_its_key_partitions_and_messages() -> None:
    channels = load_doc()["channels"]
    documented = {c["address"]: c for c in channels.values()}
    assert set(documented) == {t.name for t in TOPICS}
    components = load_doc()["components"]["messages"]
    for topic in TOPICS:
        channel = documented[topic.name]
        assert channel["x-key"] == topic.key
        assert channel["x-partitions"] == topic.partitions
        names = {
            components[ref["$ref"].rsplit("/", 1)[1]]["name"]
            for ref in channel["messages"].values()
        }
        assert names == set(topic.messages), topic.name


def test_every_documented_message_has_its_schema_file() -> None:
    folder = Path(str(schemas_folder()))
    registry = SchemaRegistry.load()
    for message in load_doc()["components"]["messages"].values():
        payload = folder / message["payload"]["$ref"]
        assert payload.is_file(), payload
        assert payload.name == f"{message['name']}.json"
        assert message["name"] in registry.event_types


def test_every_schema_is_used_by_a_topic() -> None:
    used = {m for t in TOPICS for m in t.messages}
    assert SchemaRegistry.load().event_types == used
