"""The Dense module: a linear layer + activation applied to the sentence embedding."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from embedding_core.modules.base import Module, register

_ACTIVATION_PREFIXES = ("torch.nn.modules.activation.", "torch.nn.modules.linear.", "torch.nn.")


def activation_from_name(name: str) -> nn.Module:
    """Build an activation from its dotted class name, such as ``torch.nn.modules.activation.Tanh``.

    Only classes from ``torch.nn`` are accepted: a config file must never make us import
    arbitrary code.
    """
    class_name = name
    for prefix in _ACTIVATION_PREFIXES:
        if name.startswith(prefix):
            class_name = name[len(prefix) :]
            break
    activation = getattr(nn, class_name, None) if "." not in class_name else None
    if activation is None or not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise ValueError(f"Unsupported Dense activation_function {name!r}: expected a torch.nn module class.")
    return activation()


def activation_name(activation: nn.Module) -> str:
    cls = type(activation)
    return f"{cls.__module__}.{cls.__name__}"


@register
class Dense(Module):
    """``activation(linear(sentence_embedding))``, as in a sentence-transformers Dense folder."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation_function: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = bias
        self.activation_function = activation_function if activation_function is not None else nn.Tanh()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def get_sentence_embedding_dimension(self) -> int:
        return self.out_features

    def output_dimension(self, input_dimension: int | None) -> int:
        return self.out_features

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = self.activation_function(self.linear(features["sentence_embedding"]))
        return features

    config_keys = ("in_features", "out_features", "bias", "activation_function")

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "activation_function": activation_name(self.activation_function)}

    def save(self, output_path: str, safe_serialization: bool = True) -> None:
        """Config and weights; the weights are always safetensors (no pickle is written)."""
        from safetensors.torch import save_file

        self.save_config(output_path)
        state = {key: value.contiguous() for key, value in self.linear.state_dict().items()}
        save_file({f"linear.{key}": value for key, value in state.items()}, os.path.join(output_path, "model.safetensors"))

    @classmethod
    def load(cls, input_path: str, **context: Any) -> Dense:
        config = cls.load_config(input_path)
        if not config:
            raise FileNotFoundError(f"Dense module folder {input_path} has no {cls.config_file}.")
        module = cls(
            in_features=int(config["in_features"]),
            out_features=int(config["out_features"]),
            bias=bool(config.get("bias", True)),
            activation_function=activation_from_name(
                config.get("activation_function", "torch.nn.modules.activation.Tanh")
            ),
        )
        safetensors_path = os.path.join(input_path, "model.safetensors")
        if os.path.exists(safetensors_path):
            from safetensors.torch import load_file

            state = load_file(safetensors_path)
        else:
            state = torch.load(
                os.path.join(input_path, "pytorch_model.bin"), map_location="cpu", weights_only=True
            )
        linear_state = {key.removeprefix("linear."): value for key, value in state.items()}
        module.linear.load_state_dict(linear_state)
        return module
