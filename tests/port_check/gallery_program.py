"""A SimpleLLMFunc program: describe pictures, then draft captions in forks of a chat agent.

Uses: multimodal arguments (ImgPath, ImgUrl, Text from SimpleLLMFunc.type), llm_function
returning a dict, llm_chat in text mode with SelfReference, self_reference.instance.fork
and fork_spawn / fork_gather_all from code, memory handles.
"""

import asyncio
from typing import Dict

from SimpleLLMFunc import OpenAICompatible, SelfReference, llm_chat, llm_function
from SimpleLLMFunc.type import ImgPath, ImgUrl, Text

llm = OpenAICompatible.load_from_json_file("provider.json")["scripted"]["scripted"]
memory = SelfReference()


@llm_function(llm_interface=llm)
async def describe(photo: ImgPath, reference: ImgUrl, question: Text) -> Dict[str, str]:
    """Describe the photo, comparing it with the reference picture."""
    pass


@llm_chat(llm_interface=llm, self_reference=memory, self_reference_key="curator", stream=False)
async def curator(message: str, history=None):
    """You are a gallery curator who writes short captions."""
    pass


async def main():
    description = await describe(
        ImgPath("photo.png"), ImgUrl("https://example.com/ref.png"), Text("What is shown?")
    )
    print("subject:", description["subject"])

    memory.bind_history(
        "curator", [{"role": "user", "content": f"Subject: {description['subject']}"}]
    )
    first = await memory.instance.fork("Write a caption in English")
    print("english:", first["response"], "from", first["memory_key"])
    handles = [
        await memory.instance.fork_spawn(f"Write a caption in {lang}")
        for lang in ("French", "German")
    ]
    results = await memory.instance.fork_gather_all([h["fork_id"] for h in handles])
    for handle in handles:
        print(results[handle["fork_id"]]["status"], results[handle["fork_id"]]["response"])
    print("curator memory untouched:", memory.memory["curator"].count() == 1)


if __name__ == "__main__":
    asyncio.run(main())
