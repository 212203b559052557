from django import forms


class MessageForm(forms.Form):
    # The length limit is enforced (with a clearer message) by services.clean_question.
    text = forms.CharField(label="Message", strip=False, widget=forms.Textarea(attrs={"rows": 2}))
    app = forms.SlugField(required=False)
    conversation = forms.IntegerField(required=False, min_value=1)
