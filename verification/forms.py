"""Portal forms of verification: shape only; ``verification.services`` checks the rules."""

from django import forms


class DowntimeForm(forms.Form):
    """Announce maintenance of a pool (UTC times)."""

    start = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC",
    )
    end = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="UTC",
    )
    reason = forms.CharField(max_length=500, required=False)
