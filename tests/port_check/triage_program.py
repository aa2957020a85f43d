"""A SimpleLLMFunc program: typed LLM functions triage a support inbox.

Uses: provider.json, llm_function with pydantic / bool / list return types, a tool,
asyncio.gather over LLM functions, fn.stream with responses_only, event attributes.
"""

import asyncio
from typing import List

from pydantic import BaseModel, Field

from SimpleLLMFunc import OpenAICompatible, llm_function, tool
from SimpleLLMFunc.hooks import LLMCallEndEvent, events_only, responses_only

llm = OpenAICompatible.load_from_json_file("provider.json")["scripted"]["scripted"]


class Ticket(BaseModel):
    title: str
    priority: int = Field(description="1 (low) to 5 (urgent)")
    tags: List[str]


@tool(name="lookup_customer", description="Look up a customer's plan by e-mail address")
async def lookup_customer(email: str) -> dict:
    return {"email": email, "plan": "enterprise"}


@llm_function(llm_interface=llm, toolkit=[lookup_customer])
async def triage(email: str, body: str) -> Ticket:
    """Turn a support e-mail into a ticket. Look up the customer's plan first."""
    pass


@llm_function(llm_interface=llm)
async def is_spam(body: str) -> bool:
    """Decide whether the e-mail is spam."""
    pass


@llm_function(llm_interface=llm)
async def keywords(text: str) -> list[str]:
    """Extract up to three keywords from the text."""
    pass


async def main():
    inbox = [
        ("ada@example.com", "The export is broken and we need it fixed today"),
        ("bob@prizes.biz", "WIN A PRIZE now"),
    ]
    flags = await asyncio.gather(*(is_spam(body) for _, body in inbox))
    for (email, body), spam in zip(inbox, flags):
        if spam:
            print(f"spam: {email}")
            continue
        ticket = await triage(email, body)
        print(f"ticket: {ticket.title} p{ticket.priority} {','.join(ticket.tags)}")
    async for response in responses_only(keywords.stream("export broken today")):
        print("keywords:", ", ".join(response.response))
    async for event in events_only(keywords.stream("export again")):
        if isinstance(event.event, LLMCallEndEvent):
            print("keyword tokens:", event.event.usage.total_tokens > 0)


if __name__ == "__main__":
    asyncio.run(main())
