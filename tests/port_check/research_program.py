"""A SimpleLLMFunc program: a research agent with SelfReference memory that forks.

Uses: SelfReference (bind_history, memory[key], snapshot_history), self_reference_key,
memory continued across calls (history=None), forks spawned and gathered by the model,
events routed by EventOrigin.fork_id, responses_only.
"""

import asyncio

from SimpleLLMFunc import OpenAICompatible, SelfReference, llm_chat
from SimpleLLMFunc.hooks import ReactEndEvent, is_event_yield, is_response_yield

llm = OpenAICompatible.load_from_json_file("provider.json")["scripted"]["scripted"]
self_ref = SelfReference()


@llm_chat(
    llm_interface=llm,
    self_reference=self_ref,
    self_reference_key="researcher",
    enable_event=True,
)
async def researcher(message: str, history=None):
    """You are a researcher. Split independent questions into forks."""
    pass


async def main():
    self_ref.bind_history("researcher", [{"role": "user", "content": "My project is Atlas."}])
    self_ref.memory["researcher"].append({"role": "assistant", "content": "Noted: Atlas."})
    lanes = {}
    answer = None
    async for output in researcher("Compare the two databases for Atlas"):
        if is_event_yield(output):
            lane = output.origin.fork_id or "main"
            lanes[lane] = lanes.get(lane, 0) + 1
            if isinstance(output.event, ReactEndEvent) and output.origin.fork_id:
                print(f"{output.origin.fork_id} (depth {output.origin.fork_depth}) finished")
        elif is_response_yield(output):
            answer = output.response
    print("answer:", answer)
    print("lanes:", ", ".join(sorted(lanes)))
    remembered = self_ref.snapshot_history("researcher")
    print("remembers Atlas:", any("Atlas" in str(m.get("content")) for m in remembered))
    print("memory keys:", ", ".join(self_ref.memory.keys()))


if __name__ == "__main__":
    asyncio.run(main())
