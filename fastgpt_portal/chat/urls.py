from django.urls import path

from fastgpt_portal.chat import streaming, views

app_name = "chat"

urlpatterns = [
    path("", views.chat_home, name="home"),
    path("c/<int:pk>/", views.conversation_page, name="conversation"),
    path("c/<int:pk>/delete", views.conversation_delete, name="conversation-delete"),
    path("c/<int:pk>/rename", views.conversation_rename, name="conversation-rename"),
    path("chat/send", views.send, name="send"),
    path("chat/turns/<int:pk>/", views.turn_detail, name="turn"),
    path("chat/turns/<int:pk>/events", streaming.turn_events, name="turn-events"),
    path("chat/turns/<int:pk>/cancel", views.turn_cancel, name="turn-cancel"),
    path("chat/turns/<int:pk>/retry", views.turn_retry, name="turn-retry"),
    path("history/", views.history, name="history"),
]
