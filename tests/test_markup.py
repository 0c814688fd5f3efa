"""HTML in CAP text as a listener should hear it (controller/speech/markup.py): what a villager would notice
is a tag, an entity or script code read aloud, or two sentences run together where a <br> was."""

from __future__ import annotations

import pytest

from controller.speech.markup import speech_text


@pytest.mark.parametrize(("written", "heard"), [
    # tags vanish, their text stays; entities (named, decimal, hex) are decoded
    ("<b>暴雨</b><font color=red>红色</font>预警", "暴雨红色预警"),
    ("<strong>Flood</strong> warning &amp; advisory", "Flood warning & advisory"),
    ("降雨量&#62;50毫米&#x3002;", "降雨量>50毫米。"),
    ("请注意&nbsp;防范", "请注意\xa0防范"),  # a no-break space is a space (the caller folds it)
    # script and style content is code: dropped entirely, even when never closed
    ("注意<script>alert('撤离')</script>安全<style>p { color: red }</style>", "注意安全"),
    ("请转移<SCRIPT type='text/javascript'>document.write('x')</SCRIPT>。", "请转移。"),
    ("请转移。<script>var x = '<b>'; never closed", "请转移。"),
    ("<!-- 内部备注 -->请转移<?php echo 1 ?>", "请转移"),
    # <br> is a clause's pause, two of them or a block a sentence's, in the language around it
    ("防御指南：<br>1、停止户外作业<br/>2、转移群众<br><br>请听从指挥",
     "防御指南：1、停止户外作业，2、转移群众。请听从指挥"),
    ("<p>暴雨红色预警</p>\n<p>请立即转移</p>", "暴雨红色预警。请立即转移"),
    ("<p>已解除。</p><div>谢谢配合</div>", "已解除。谢谢配合"),  # no doubled stop
    ("<p>Flash Flood Warning</p>\n<p>Move to higher ground</p>",
     "Flash Flood Warning. Move to higher ground"),
    ("Rain ends tonight<br>Winds ease", "Rain ends tonight, Winds ease"),
    ("Instructions:<br>Move now", "Instructions: Move now"),
    ("<table><tr><td>刘桥村</td><td>转移</td></tr></table>", "刘桥村，转移"),
    # Word's namespaced tags, custom elements and every HTML element are markup too
    ("<p class=MsoNormal>请转移<o:p></o:p></p>", "请转移"),
    ("<x-warning level=red>请转移</x-warning><iframe src=//x></iframe><input value=1>", "请转移"),
    ("请转移<svg onload=alert(1)><text>图示</text></svg><template><p>备用</p></template>", "请转移"),
    # escaped twice (a common feed bug): still never read out
    ("&lt;b&gt;暴雨&lt;/b&gt;预警 &amp;amp; 转移", "暴雨预警 & 转移"),
    # invisible characters are removed
    ("请\u200b转移\ufeff&shy;&#8203;", "请转移"),
])
def test_markup_is_not_read_aloud(written: str, heard: str) -> None:
    assert speech_text(written) == heard


@pytest.mark.parametrize("plain", [
    "能见度<200米，气温<5℃", "rain > 50 mm and wind < 10 m/s", "R&D 中心", "A & B",
    "风力<a级 且 b>c",  # not an HTML element: text that happens to hold '<'
    "第一行\n第二行",  # plain line breaks are the caller's to fold
])
def test_plain_text_is_kept_as_written(plain: str) -> None:
    assert speech_text(plain) == plain
