"""Text of a completion and of a solution, for rewards and data alike (plain strings or chat messages)."""


def completion_text(completion) -> str:
    """The text to score: a plain string, or the content of the last assistant message of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, list):  # content parts, as multimodal chat templates write them
                    content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
                return content if isinstance(content, str) else ""
    return ""


def solution_text(solution) -> str:
    """A ground truth as text; integral floats (parquet columns with missing values) lose their `.0`."""
    if isinstance(solution, float) and solution.is_integer():
        return str(int(solution))
    return solution if isinstance(solution, str) else str(solution)
