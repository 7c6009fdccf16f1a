from facemint.errors import Unprocessable


class InvalidWebhookUrl(Unprocessable):
    code = "invalid_webhook_url"
    title = "Invalid webhook URL"
